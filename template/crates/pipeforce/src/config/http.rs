//! `PIPEFORCE_HTTP_*`: where the HTTP server listens.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
};

use super::read::{Checker, Environment, variables};

/// The HTTP server's address.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// `PIPEFORCE_HTTP_HOST`: the IP address to listen on (default `0.0.0.0`, every interface,
    /// which a container needs; use `127.0.0.1` to stay local).
    pub host: IpAddr,
    /// `PIPEFORCE_HTTP_PORT`: the port to listen on; `0` picks a free one (tests use that).
    pub port: u16,
}

variables! {
    /// The variables [`HttpConfig`] is read from.
    struct Vars in "PIPEFORCE_HTTP_" { host, port }
}

impl HttpConfig {
    pub(super) fn read(env: &Environment, default_port: u16, check: &mut Checker) -> Self {
        let vars = Vars::read(env, check);
        Self {
            host: check.parse(
                &vars.host,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                "an IP address such as 0.0.0.0 or 127.0.0.1",
            ),
            port: check.parse(
                &vars.port,
                default_port,
                "a port number from 0 to 65535 (0 picks a free port)",
            ),
        }
    }
}

/// Its part of the start-up line.
impl fmt::Display for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http={}:{}", self.host, self.port)
    }
}
