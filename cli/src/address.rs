//! The `--server` address: `HOST:PORT`, or `HOST` alone meaning port [`DEFAULT_PORT`].

/// The broker's port when `--server` names none.
pub const DEFAULT_PORT: u16 = 7070;

/// `server` with [`DEFAULT_PORT`] added when it names no port: `127.0.0.1` →
/// `127.0.0.1:7070`, `localhost` → `localhost:7070`, `::1` or `[::1]` → `[::1]:7070`.
/// An address with a port is returned as it is.
pub fn normalise(server: &str) -> String {
    let server = server.trim();
    if server.parse::<std::net::SocketAddr>().is_ok() {
        return server.to_owned();
    }
    if server.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{server}]:{DEFAULT_PORT}");
    }
    if server.starts_with('[') && server.ends_with(']') {
        return format!("{server}:{DEFAULT_PORT}");
    }
    match server.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => server.to_owned(),
        _ => format!("{server}:{DEFAULT_PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_without_a_port_gets_7070() {
        assert_eq!(normalise("127.0.0.1"), "127.0.0.1:7070");
        assert_eq!(normalise("localhost"), "localhost:7070");
        assert_eq!(normalise("::1"), "[::1]:7070");
        assert_eq!(normalise("[::1]"), "[::1]:7070");
        assert_eq!(normalise("127.0.0.1:9000"), "127.0.0.1:9000");
        assert_eq!(normalise("[::1]:9000"), "[::1]:9000");
        assert_eq!(normalise("broker.internal:80"), "broker.internal:80");
    }
}
