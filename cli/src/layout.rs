//! Text layout shared by the commands: `key value` lines and aligned tables.

/// One aligned `key value` line, as `weir topic info` and `weir group info` print them. Keys
/// longer than 18 characters push their value right.
pub fn kv(key: &str, value: impl std::fmt::Display) -> String {
    format!("{key:<18} {value}\n")
}

/// `rows` (the header first) as a table: every column but the last padded to its widest cell
/// plus two spaces, trailing spaces trimmed, one line per row.
pub fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_padded_to_their_widest_cell_and_lines_trimmed() {
        let rows = [
            ["A".to_owned(), "BB".to_owned(), "C".to_owned()],
            ["wide".to_owned(), "".to_owned(), "".to_owned()],
        ];
        assert_eq!(aligned(&rows), "A     BB  C\nwide\n");
        assert_eq!(kv("depth", 3), "depth              3\n");
    }
}
