//! Broker addresses: [`ToBrokerAddr`] turns what the app gives [`crate::Client::connect`] into
//! `host:port`, with [`DEFAULT_PORT`] when the port is left out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// The broker's wire port when an address names none (the broker's default `--listen` port).
pub const DEFAULT_PORT: u16 = 7070;

/// Something that names a broker: a `&str` or `String` (`"127.0.0.1:7070"`, `"localhost:7070"`,
/// `"[::1]:7070"`, or without the port — `"127.0.0.1"`, `"broker.internal"`, `"::1"` — for
/// [`DEFAULT_PORT`]), a [`SocketAddr`], or an `(ip or host, port)` pair. Host names are resolved
/// at every connect, so a reconnect follows a name that moved.
pub trait ToBrokerAddr {
    /// The address as `host:port` (an IPv6 host in brackets), with [`DEFAULT_PORT`] added when
    /// it names no port.
    fn to_broker_addr(&self) -> String;
}

impl ToBrokerAddr for str {
    fn to_broker_addr(&self) -> String {
        with_default_port(self)
    }
}

impl ToBrokerAddr for String {
    fn to_broker_addr(&self) -> String {
        with_default_port(self)
    }
}

impl ToBrokerAddr for SocketAddr {
    fn to_broker_addr(&self) -> String {
        self.to_string()
    }
}

impl ToBrokerAddr for SocketAddrV4 {
    fn to_broker_addr(&self) -> String {
        self.to_string()
    }
}

impl ToBrokerAddr for SocketAddrV6 {
    fn to_broker_addr(&self) -> String {
        self.to_string()
    }
}

impl ToBrokerAddr for (IpAddr, u16) {
    fn to_broker_addr(&self) -> String {
        SocketAddr::from(*self).to_string()
    }
}

impl ToBrokerAddr for (Ipv4Addr, u16) {
    fn to_broker_addr(&self) -> String {
        SocketAddr::from(*self).to_string()
    }
}

impl ToBrokerAddr for (Ipv6Addr, u16) {
    fn to_broker_addr(&self) -> String {
        SocketAddr::from(*self).to_string()
    }
}

impl ToBrokerAddr for (&str, u16) {
    fn to_broker_addr(&self) -> String {
        match self.0.parse::<Ipv6Addr>() {
            Ok(ip) => SocketAddr::from((ip, self.1)).to_string(),
            Err(_) => format!("{}:{}", self.0, self.1),
        }
    }
}

impl<T: ToBrokerAddr + ?Sized> ToBrokerAddr for &T {
    fn to_broker_addr(&self) -> String {
        (**self).to_broker_addr()
    }
}

/// `addr` with `:7070` appended when it names no port: a bare IPv4 address or host name, a bare
/// IPv6 address (bracketed then), or a bracketed IPv6 address without a port. Anything else is
/// returned as given (resolving it reports what is wrong with it).
fn with_default_port(addr: &str) -> String {
    let addr = addr.trim();
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_owned();
    }
    if let Ok(ip) = addr.parse::<Ipv6Addr>() {
        return SocketAddr::from((ip, DEFAULT_PORT)).to_string();
    }
    if addr.starts_with('[') && addr.ends_with(']') {
        return format!("{addr}:{DEFAULT_PORT}");
    }
    match addr.rsplit_once(':') {
        Some(_) => addr.to_owned(),
        None => format!("{addr}:{DEFAULT_PORT}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_port_gets_the_default_port() {
        assert_eq!("127.0.0.1".to_broker_addr(), "127.0.0.1:7070");
        assert_eq!("localhost".to_broker_addr(), "localhost:7070");
        assert_eq!(" broker.internal ".to_broker_addr(), "broker.internal:7070");
        assert_eq!("::1".to_broker_addr(), "[::1]:7070");
        assert_eq!("[::1]".to_broker_addr(), "[::1]:7070");
        assert_eq!(String::from("10.0.0.5").to_broker_addr(), "10.0.0.5:7070");
    }

    #[test]
    fn an_address_with_a_port_is_kept() {
        assert_eq!("127.0.0.1:9000".to_broker_addr(), "127.0.0.1:9000");
        assert_eq!("localhost:7070".to_broker_addr(), "localhost:7070");
        assert_eq!("[::1]:9000".to_broker_addr(), "[::1]:9000");
        let sock: SocketAddr = "127.0.0.1:1234".parse().unwrap();
        assert_eq!(sock.to_broker_addr(), "127.0.0.1:1234");
        fn given(addr: impl ToBrokerAddr) -> String {
            addr.to_broker_addr()
        }
        assert_eq!(given(sock), "127.0.0.1:1234");
        let host = String::from("localhost:9");
        assert_eq!(given(&host), "localhost:9", "a reference to a String");
        assert_eq!(given("localhost"), "localhost:7070");
        assert_eq!(("localhost", 80).to_broker_addr(), "localhost:80");
        assert_eq!(("::1", 80).to_broker_addr(), "[::1]:80");
        assert_eq!((Ipv4Addr::LOCALHOST, 5).to_broker_addr(), "127.0.0.1:5");
    }
}
