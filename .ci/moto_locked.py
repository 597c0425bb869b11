"""moto's server with DynamoDB requests served one at a time.

moto applies a conditional write as read, check, write, with no lock: two writes racing on
one item can both pass their condition, which real DynamoDB never allows. The tests rely on
conditional writes being atomic (leases, the identity map's customer lease), so every
DynamoDB request here runs under one lock. Other services (SQS long polls) are not locked.

moto also counts a FIFO message group as busy while any message of it was received, even one
whose visibility timeout has run out: when two messages of a group come back from a hide, the
first is skipped because the second still looks in flight, and the second is delivered first.
SQS holds a group only while a received message of it is still invisible; that rule is
patched in below, so a group's messages come back in order.

Usage: python moto_locked.py HOST PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sqs.models import Queue
from werkzeug.serving import run_simple

DYNAMODB = threading.Lock()


def one_dynamodb_request_at_a_time(app):
    def serve(environ, start_response):
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return app(environ, start_response)
        with DYNAMODB:
            # The whole answer is produced inside the lock: a WSGI app may defer work to the
            # iteration of its body.
            result = app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            return [body]

    return serve


def groups_in_flight(queue):
    return {
        message.group_id
        for message in queue.pending_messages
        if message.group_id is not None and not message.visible
    }


def main():
    Queue.pending_message_groups = property(groups_in_flight)
    host, port = sys.argv[1], int(sys.argv[2])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        host,
        port,
        one_dynamodb_request_at_a_time(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
