//! Sizes: parsed from flags (`10MiB`, `10MB`, `4096`) and printed in tables (`10.0 MiB`).
//! `--json` output keeps raw bytes.

/// Parses a size flag: a whole number of bytes with an optional unit, case-insensitive: `B`,
/// `KB`/`MB`/`GB`/`TB` (powers of 1000), `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024). A space
/// between number and unit is allowed. Fails, naming the accepted forms, on anything else or
/// on a size past `u64::MAX` bytes.
pub fn parse_size(arg: &str) -> Result<u64, String> {
    let text = arg.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return Err(invalid(arg)),
    };
    digits
        .parse::<u64>()
        .map_err(|_| invalid(arg))?
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{arg:?} is more than {} bytes", u64::MAX))
}

/// [`parse_size`] for a flag held as `u32` (a per-message size): fails past `u32::MAX` bytes.
pub fn parse_size_u32(arg: &str) -> Result<u32, String> {
    let n = parse_size(arg)?;
    u32::try_from(n).map_err(|_| format!("{arg:?} is more than {} bytes", u32::MAX))
}

/// [`parse_size`] for a flag held as `usize` (a payload size).
pub fn parse_size_usize(arg: &str) -> Result<usize, String> {
    let n = parse_size(arg)?;
    usize::try_from(n).map_err(|_| format!("{arg:?} is more than {} bytes", usize::MAX))
}

fn invalid(arg: &str) -> String {
    format!(
        "invalid size {arg:?}: expected a whole number of bytes with an optional unit \
         (B, KB, MB, GB, TB = 1000^n; KiB, MiB, GiB, TiB = 1024^n), e.g. 4096, 64KiB, 10MB, 1GiB"
    )
}

/// Bytes with a binary unit for tables: `512 B`, `1.5 KiB`, `10.0 MiB` (one decimal above
/// bytes, up to TiB).
pub fn format_size(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A growth or shrink in bytes as [`format_size`] prints it, with its sign: `+1.5 MiB`,
/// `-512 B`, `+0 B`.
pub fn format_signed_size(n: i64) -> String {
    let sign = if n < 0 { '-' } else { '+' };
    format!("{sign}{}", format_size(n.unsigned_abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_parses() {
        for (arg, bytes) in [
            ("10MiB", 10 << 20),
            ("10MB", 10_000_000),
            ("1GB", 1_000_000_000),
            ("1GiB", 1 << 30),
            ("64KiB", 64 << 10),
            ("4096", 4096),
            ("4096B", 4096),
            ("10mib", 10 << 20),
            ("10 MiB", 10 << 20),
            ("2kb", 2000),
            ("0", 0),
        ] {
            assert_eq!(parse_size(arg), Ok(bytes), "{arg}");
        }
    }

    #[test]
    fn anything_else_is_a_clear_error() {
        for arg in ["", "MiB", "10XB", "1.5MiB", "-1", "10 M", "ten"] {
            let err = parse_size(arg).unwrap_err();
            assert!(
                err.contains("invalid size") && err.contains("KiB"),
                "{arg}: {err}"
            );
        }
        assert!(parse_size("20000000TiB").unwrap_err().contains("more than"));
        assert!(parse_size_u32("4GiB").unwrap_err().contains("more than"));
        assert_eq!(parse_size_u32("4MiB"), Ok(4 << 20));
    }

    #[test]
    fn sizes_print_with_one_unit() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1024), "1.0 KiB");
        assert_eq!(format_size(1536), "1.5 KiB");
        assert_eq!(format_size(10 << 20), "10.0 MiB");
        assert_eq!(format_size(256 << 20), "256.0 MiB");
        assert_eq!(format_size(3 << 30), "3.0 GiB");
        assert_eq!(format_signed_size(1536 << 10), "+1.5 MiB");
        assert_eq!(format_signed_size(-512), "-512 B");
    }
}
