"""moto's server with DynamoDB requests served one at a time.

moto applies a conditional write as read, check, write, with no lock: two writes racing on
one item can both pass their condition, which real DynamoDB never allows. The tests rely on
conditional writes being atomic (leases, the identity map's customer lease), so every
DynamoDB request here runs under one lock. Other services (SQS long polls) are not locked.

Usage: python moto_locked.py HOST PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
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


def main():
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
