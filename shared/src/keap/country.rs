//! Country codes as Keap wants them. Chargify sends ISO 3166-1 alpha-2 (`US`); Keap wants
//! alpha-3 (`USA`): the v2 spec says so (`ISO 3166-1 alpha-3, e.g. "USA"`), the v1 spec is
//! silent and shares v2's address store. The table is the `celes` crate's ISO 3166-1 list,
//! so no codes are kept here.

use celes::Country;

/// The alpha-3 code for an ISO 3166-1 alpha-2 or alpha-3 code, any case, surrounding spaces
/// ignored; `None` for anything else (empty, a country name, a retired or made-up code).
///
/// Alpha-3 is accepted as well so that a value already converted, or typed by a person in
/// Keap's form, passes through unchanged instead of being dropped.
pub fn keap_country_code(code: &str) -> Option<&'static str> {
    let code = code.trim();
    let country = match code.len() {
        2 => Country::from_alpha2(code).ok()?,
        3 => Country::from_alpha3(code).ok()?,
        _ => return None,
    };
    Some(country.alpha3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha2_becomes_alpha3() {
        assert_eq!(keap_country_code("US"), Some("USA"));
        assert_eq!(keap_country_code("GB"), Some("GBR"));
        assert_eq!(keap_country_code("DE"), Some("DEU"));
        assert_eq!(keap_country_code("AX"), Some("ALA"));
        assert_eq!(keap_country_code(" ca "), Some("CAN"));
    }

    #[test]
    fn alpha3_passes_through_in_upper_case() {
        assert_eq!(keap_country_code("USA"), Some("USA"));
        assert_eq!(keap_country_code("nzl"), Some("NZL"));
    }

    #[test]
    fn anything_else_is_unknown() {
        for code in [
            "",
            " ",
            "U",
            "UK",
            "ZZ",
            "XX",
            "United States",
            "USAA",
            "12",
        ] {
            assert_eq!(keap_country_code(code), None, "{code:?}");
        }
    }
}
