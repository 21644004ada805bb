//! Durations of topic settings: parsed from flags (`--max-age 10m`) and printed in tables
//! (`10m`). `--json` output keeps raw milliseconds.

/// Milliseconds in each unit a duration flag accepts, largest first.
const UNITS: [(&str, u64); 5] = [
    ("d", 24 * 60 * 60 * 1000),
    ("h", 60 * 60 * 1000),
    ("m", 60 * 1000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses an age bound flag: a whole number with a unit — `ms`, `s`, `m` (minutes), `h` or
/// `d` (case-insensitive, a space between number and unit allowed) — into milliseconds; `0`
/// or `none` is 0, meaning no age bound. Fails, naming the accepted forms, on anything else:
/// a number without a unit (other than 0), a fraction, a negative number, an unknown unit,
/// or more than `u64::MAX` milliseconds.
pub fn parse_max_age(arg: &str) -> Result<u64, String> {
    let text = arg.trim();
    if text.eq_ignore_ascii_case("none") || text == "0" {
        return Ok(0);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let Some(&(_, ms)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(invalid(arg));
    };
    digits
        .parse::<u64>()
        .map_err(|_| invalid(arg))?
        .checked_mul(ms)
        .ok_or_else(|| format!("{arg:?} is more than {} milliseconds", u64::MAX))
}

fn invalid(arg: &str) -> String {
    format!(
        "invalid duration {arg:?}: expected a whole number with a unit (ms, s, m, h, d), \
         e.g. 500ms, 30s, 10m, 12h, 7d; or none (or 0) for no age bound"
    )
}

/// An age bound for tables: `none`, or milliseconds in the largest unit that divides them
/// exactly (`10m`, `90s`, `1500ms`, `7d`) — what [`parse_max_age`] reads back.
pub fn format_max_age(ms: Option<u64>) -> String {
    match ms {
        None | Some(0) => "none".to_owned(),
        Some(ms) => {
            let (name, per) = UNITS
                .iter()
                .find(|(_, per)| ms % per == 0)
                .copied()
                .unwrap_or(("ms", 1));
            format!("{}{name}", ms / per)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_parses_to_milliseconds() {
        assert_eq!(parse_max_age("500ms"), Ok(500));
        assert_eq!(parse_max_age("30s"), Ok(30_000));
        assert_eq!(parse_max_age("10m"), Ok(600_000));
        assert_eq!(parse_max_age("12h"), Ok(43_200_000));
        assert_eq!(parse_max_age("7d"), Ok(604_800_000));
        assert_eq!(parse_max_age(" 10 M "), Ok(600_000), "case and spaces");
    }

    #[test]
    fn none_and_zero_mean_no_age_bound() {
        assert_eq!(parse_max_age("none"), Ok(0));
        assert_eq!(parse_max_age("NONE"), Ok(0));
        assert_eq!(parse_max_age("0"), Ok(0));
        assert_eq!(parse_max_age("0s"), Ok(0));
    }

    #[test]
    fn bad_durations_are_refused_naming_the_accepted_forms() {
        for bad in [
            "",
            "10",
            "ten m",
            "1.5h",
            "-5m",
            "10w",
            "10 minutes",
            "m",
            "5mss",
        ] {
            let err = parse_max_age(bad).expect_err(bad);
            assert!(err.contains("ms, s, m, h, d"), "{bad}: {err}");
        }
        let err = parse_max_age("99999999999999999d").unwrap_err();
        assert!(err.contains("more than"), "{err}");
    }

    #[test]
    fn ages_print_in_the_largest_exact_unit_and_read_back() {
        assert_eq!(format_max_age(None), "none");
        for (ms, shown) in [
            (600_000, "10m"),
            (90_000, "90s"),
            (1_500, "1500ms"),
            (604_800_000, "7d"),
            (3_600_000, "1h"),
        ] {
            assert_eq!(format_max_age(Some(ms)), shown);
            assert_eq!(parse_max_age(shown), Ok(ms));
        }
    }
}
