//! The TLS part of the configuration schema: `[[certificate]]`, `[[tls_listener]]` and a
//! route's origin TLS keys, validated into `wsedge_tls::spec` (the model `wsedge-tls` loads;
//! no mirror types).
//!
//! Parsing reads no file: the text alone is checked (names, addresses, ids, combinations)
//! with file:line:field errors, so the fuzzer and the control process validate without the
//! dataplane's files. [`crate::Config::load_tls`] then loads every certificate, key and CA
//! bundle named, which `wsedge --check` and a reload run: a missing or broken file is
//! reported with its path and what is wrong.
//!
//! ```toml
//! [[certificate]]
//! id = "main"                                   # default "certificate[N]"
//! cert = "/etc/wsedge/example.com.pem"          # leaf first, then intermediates
//! key = "/etc/wsedge/example.com.key"
//! names = ["example.com", "*.example.com"]      # default: the certificate's DNS names
//! default = true                                # for clients without SNI or unknown names
//!
//! [[tls_listener]]
//! listen = ["0.0.0.0:443"]
//! certificates = ["main"]                       # default: every [[certificate]]
//! client_auth = "none"                          # none | request | require
//! client_ca = "/etc/wsedge/client-ca.pem"       # with request / require
//! alpn = ["http/1.1"]                           # or [] (no ALPN); h2 is refused
//! min_version = "1.2"                           # or "1.3"
//! ktls = "auto"                                 # auto | off | require (kernel TLS for splice)
//! ```

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;
pub use wsedge_tls::spec::{
    Alpn, CertificateSpec, ClientAuth, KtlsMode, ListenerSpec, NamePattern, OriginTlsSpec,
    TlsConfig, TlsVersion,
};

use crate::config::FunctionKind;
use crate::error::ConfigError;
use crate::firewall::Invalid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    id: Option<Spanned<String>>,
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    names: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    default: bool,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawClientAuth {
    None,
    Request,
    Require,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKtls {
    Auto,
    Off,
    Require,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsListener {
    listen: Spanned<Vec<String>>,
    certificates: Option<Spanned<Vec<String>>>,
    client_auth: Option<Spanned<RawClientAuth>>,
    client_ca: Option<Spanned<PathBuf>>,
    alpn: Option<Spanned<Vec<String>>>,
    min_version: Option<Spanned<String>>,
    ktls: Option<RawKtls>,
}

/// The origin TLS keys of one route, as written.
#[derive(Debug, Default)]
pub(crate) struct RawOriginTls {
    pub(crate) origin_tls: Option<Spanned<bool>>,
    pub(crate) origin_server_name: Option<Spanned<String>>,
    pub(crate) origin_ca: Option<Spanned<PathBuf>>,
}

fn path_problem(path: &std::path::Path) -> Option<&'static str> {
    if path.as_os_str().is_empty() {
        Some("must not be empty")
    } else {
        None
    }
}

/// Validates `[[certificate]]` and `[[tls_listener]]`; `plain` are the plain listeners'
/// addresses (a port cannot be both).
pub(crate) fn validate(
    certificates: Vec<Spanned<RawCertificate>>,
    listeners: Vec<Spanned<RawTlsListener>>,
    plain: &[SocketAddr],
    invalid: Invalid<'_>,
) -> Result<TlsConfig, ConfigError> {
    let mut out = TlsConfig::default();
    for (index, raw) in certificates.into_iter().enumerate() {
        let field = |f: &str| format!("certificate[{index}].{f}");
        let raw = raw.into_inner();
        let id = match raw.id {
            None => format!("certificate[{index}]"),
            Some(id) => {
                let text = id.get_ref();
                if text.is_empty() || text.len() > 64 || !text.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(invalid(
                        id.span(),
                        &field("id"),
                        "must be 1-64 printable characters without spaces".into(),
                    ));
                }
                if out.certificates.iter().any(|c| &c.id == text) {
                    return Err(invalid(
                        id.span(),
                        &field("id"),
                        format!("duplicate certificate id {text:?}"),
                    ));
                }
                id.into_inner()
            }
        };
        for (name, path) in [("cert", &raw.cert), ("key", &raw.key)] {
            if let Some(why) = path_problem(path.get_ref()) {
                return Err(invalid(path.span(), &field(name), why.into()));
            }
        }
        let names = match raw.names {
            None => None,
            Some(list) => {
                let list_span = list.span();
                let mut names = Vec::new();
                for text in list.into_inner() {
                    let pattern = NamePattern::parse(&text)
                        .map_err(|m| invalid(list_span.clone(), &field("names"), m))?;
                    names.push(pattern);
                }
                if names.is_empty() && !raw.default {
                    return Err(invalid(
                        list_span,
                        &field("names"),
                        "an empty list serves the certificate for no name: give names or set default = true"
                            .into(),
                    ));
                }
                Some(names)
            }
        };
        out.certificates.push(CertificateSpec {
            id,
            cert: raw.cert.into_inner(),
            key: raw.key.into_inner(),
            names,
            default: raw.default,
        });
    }

    let mut seen: Vec<SocketAddr> = plain.to_vec();
    for (index, raw) in listeners.into_iter().enumerate() {
        let field = |f: &str| format!("tls_listener[{index}].{f}");
        let span = raw.span();
        let raw = raw.into_inner();
        let listen_span = raw.listen.span();
        let mut listen = Vec::new();
        for text in raw.listen.into_inner() {
            let addr = text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    listen_span.clone(),
                    &field("listen"),
                    format!("{text:?} is not an IP:port address"),
                )
            })?;
            if addr.port() != 0 && seen.contains(&addr) {
                return Err(invalid(
                    listen_span.clone(),
                    &field("listen"),
                    format!("{addr} is already a listener (plain or TLS)"),
                ));
            }
            seen.push(addr);
            listen.push(addr);
        }
        if listen.is_empty() {
            return Err(invalid(
                listen_span,
                &field("listen"),
                "needs at least one address".into(),
            ));
        }
        let certificates = match raw.certificates {
            None => None,
            Some(ids) => {
                let ids_span = ids.span();
                let ids = ids.into_inner();
                for id in &ids {
                    if !out.certificates.iter().any(|c| &c.id == id) {
                        return Err(invalid(
                            ids_span.clone(),
                            &field("certificates"),
                            format!("no [[certificate]] with id {id:?}"),
                        ));
                    }
                }
                if ids.is_empty() {
                    return Err(invalid(
                        ids_span,
                        &field("certificates"),
                        "an empty list serves nothing: name certificates, or leave the key out for all"
                            .into(),
                    ));
                }
                Some(ids)
            }
        };
        if certificates.is_none() && out.certificates.is_empty() {
            return Err(invalid(
                span,
                &format!("tls_listener[{index}]"),
                "a TLS listener needs a [[certificate]] to serve".into(),
            ));
        }
        let client_auth = match raw.client_auth.as_ref().map(|c| *c.get_ref()) {
            None | Some(RawClientAuth::None) => ClientAuth::None,
            Some(RawClientAuth::Request) => ClientAuth::Request,
            Some(RawClientAuth::Require) => ClientAuth::Require,
        };
        let client_ca = match (client_auth, raw.client_ca) {
            (ClientAuth::None, Some(ca)) => {
                return Err(invalid(
                    ca.span(),
                    &field("client_ca"),
                    "only with client_auth = \"request\" or \"require\"".into(),
                ));
            }
            (ClientAuth::None, None) => None,
            (_, Some(ca)) => {
                if let Some(why) = path_problem(ca.get_ref()) {
                    return Err(invalid(ca.span(), &field("client_ca"), why.into()));
                }
                Some(ca.into_inner())
            }
            (mode, None) => {
                let at = raw.client_auth.map_or(span.clone(), |c| c.span());
                return Err(invalid(
                    at,
                    &field("client_ca"),
                    format!(
                        "client_auth = {:?} needs client_ca, the CA bundle client certificates must chain to",
                        mode.as_str()
                    ),
                ));
            }
        };
        let alpn = match raw.alpn {
            None => Alpn::Http11,
            Some(list) => {
                let list_span = list.span();
                let list = list.into_inner();
                if let Some(other) = list.iter().find(|p| p.as_str() != "http/1.1") {
                    let why = if other == "h2" {
                        "\"h2\" is not served: wsedge speaks HTTP/1.1 to clients (WebSocket over HTTP/2 is not supported); h2-only clients are refused".to_owned()
                    } else {
                        format!("{other:?}: only \"http/1.1\" can be offered (or [] for no ALPN)")
                    };
                    return Err(invalid(list_span, &field("alpn"), why));
                }
                if list.is_empty() {
                    Alpn::Off
                } else {
                    Alpn::Http11
                }
            }
        };
        let min_version = match raw.min_version {
            None => TlsVersion::Tls12,
            Some(v) => match v.get_ref().as_str() {
                "1.2" => TlsVersion::Tls12,
                "1.3" => TlsVersion::Tls13,
                other => {
                    return Err(invalid(
                        v.span(),
                        &field("min_version"),
                        format!(
                            "{other:?}: must be \"1.2\" or \"1.3\" (older versions are not offered)"
                        ),
                    ));
                }
            },
        };
        out.listeners.push(ListenerSpec {
            listen,
            certificates,
            client_auth,
            client_ca,
            alpn,
            min_version,
            ktls: match raw.ktls {
                None | Some(RawKtls::Auto) => KtlsMode::Auto,
                Some(RawKtls::Off) => KtlsMode::Off,
                Some(RawKtls::Require) => KtlsMode::Require,
            },
        });
    }
    Ok(out)
}

/// A route's `origins` entry: `IP:port`, or `wss://IP:port` (TLS to that origin).
pub(crate) fn parse_origin(text: &str) -> Result<(SocketAddr, bool), String> {
    let (tls, rest) = match text.strip_prefix("wss://") {
        Some(rest) => (true, rest.trim_end_matches('/')),
        None => (false, text),
    };
    rest.parse::<SocketAddr>()
        .map(|a| (a, tls))
        .map_err(|_| format!("{text:?} is not an IP:port address (or wss://IP:port)"))
}

/// A route's origin TLS settings. `wss` says whether its `origins` were written `wss://`
/// (`Some(true)` all, `Some(false)` none; mixed pools are refused before this). A `js`
/// route's are the trust for its scripts' `wss://` sockets: `origin_ca` or the system's
/// store, each socket verified against the name in its URL.
pub(crate) fn origin_tls(
    index: usize,
    raw: RawOriginTls,
    wss: Option<bool>,
    origins_span: Range<usize>,
    function: Option<FunctionKind>,
    invalid: Invalid<'_>,
) -> Result<Option<OriginTlsSpec>, ConfigError> {
    let field = |f: &str| format!("route[{index}].{f}");
    // The CA bundle's path, for an origin pool and a js route alike.
    let checked_ca = |ca: Option<Spanned<PathBuf>>| -> Result<Option<PathBuf>, ConfigError> {
        match ca {
            Some(ca) => match path_problem(ca.get_ref()) {
                Some(why) => Err(invalid(ca.span(), &field("origin_ca"), why.into())),
                None => Ok(Some(ca.into_inner())),
            },
            None => Ok(None),
        }
    };
    if function == Some(FunctionKind::Js) {
        for (name, span) in [
            ("origin_tls", raw.origin_tls.as_ref().map(Spanned::span)),
            (
                "origin_server_name",
                raw.origin_server_name.as_ref().map(Spanned::span),
            ),
        ] {
            if let Some(span) = span {
                return Err(invalid(
                    span,
                    &field(name),
                    "a js route has no origins: its scripts' wss:// sockets are verified against the name in their URL (origin_ca sets the CAs they trust)".into(),
                ));
            }
        }
        let ca = checked_ca(raw.origin_ca)?;
        return Ok(Some(OriginTlsSpec {
            server_name: None,
            ca,
        }));
    }
    let has_function = function.is_some();
    let flag = raw.origin_tls.as_ref().map(|f| (*f.get_ref(), f.span()));
    let tls = match (flag, wss) {
        (Some((false, span)), Some(true)) => {
            return Err(invalid(
                span,
                &field("origin_tls"),
                "origin_tls = false contradicts wss:// origins".into(),
            ));
        }
        (Some((on, _)), _) => on,
        (None, w) => w.unwrap_or(false),
    };
    if has_function && (tls || raw.origin_server_name.is_some() || raw.origin_ca.is_some()) {
        let span = raw
            .origin_tls
            .map(|s| s.span())
            .or_else(|| raw.origin_server_name.as_ref().map(Spanned::span))
            .or_else(|| raw.origin_ca.as_ref().map(Spanned::span))
            .unwrap_or(origins_span);
        return Err(invalid(
            span,
            &field("origin_tls"),
            "a function route has no origins to speak TLS to".into(),
        ));
    }
    if !tls {
        for (name, span) in [
            (
                "origin_server_name",
                raw.origin_server_name.as_ref().map(Spanned::span),
            ),
            ("origin_ca", raw.origin_ca.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                return Err(invalid(
                    span,
                    &field(name),
                    "only with TLS to the origins (origin_tls = true or wss:// origins)".into(),
                ));
            }
        }
        return Ok(None);
    }
    let server_name = match raw.origin_server_name {
        None => None,
        Some(name) => {
            let text = name.get_ref();
            let ok = text.parse::<std::net::IpAddr>().is_ok()
                || NamePattern::parse(text).is_ok_and(|p| matches!(p, NamePattern::Exact(_)));
            if !ok {
                return Err(invalid(
                    name.span(),
                    &field("origin_server_name"),
                    format!("{text:?} is not a DNS name or IP address"),
                ));
            }
            Some(text.to_ascii_lowercase())
        }
    };
    let ca = checked_ca(raw.origin_ca)?;
    Ok(Some(OriginTlsSpec { server_name, ca }))
}

#[cfg(test)]
mod tests {
    use crate::Config;

    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/examples/tls.toml");

    fn error_of(text: &str) -> String {
        Config::from_toml(text, "edge.toml")
            .expect_err("should be invalid")
            .to_string()
    }

    const CERT: &str = "[[certificate]]\nid = \"main\"\ncert = \"/c.pem\"\nkey = \"/c.key\"\n";
    const ROUTE: &str = "[[route]]\nname = \"r\"\norigins = [\"127.0.0.1:9001\"]\n";

    #[test]
    fn example_file_is_valid() {
        let config = Config::from_toml(EXAMPLE, "tls.toml").expect("docs/examples/tls.toml");
        assert!(config.dataplane.listen.is_empty(), "TLS only");
        let l = &config.tls.listeners[0];
        assert_eq!(l.listen, vec!["127.0.0.1:8443".parse().expect("addr")]);
        assert_eq!(config.tls.certificates.len(), 1);
        assert!(config.tls.certificates[0].default);
        assert_eq!(
            config.routes[0].origins,
            vec!["127.0.0.1:9001".parse().expect("addr")]
        );
        assert_eq!(config.routes[0].origin_tls, None);
    }

    #[test]
    fn routes_select_on_sni_with_certificate_name_syntax() {
        use crate::SniPattern;
        let listener = "[[tls_listener]]\nlisten = [\"127.0.0.1:8443\"]\n";
        let text = format!(
            "{CERT}{listener}[[route]]\nname = \"api\"\nsni = \"API.example.com\"\norigins = [\"127.0.0.1:1\"]\n\
             [[route]]\nname = \"any\"\nsni = \"*.Example.com\"\norigins = [\"127.0.0.1:2\"]\n{ROUTE}"
        );
        let config = Config::from_toml(&text, "t").expect("valid");
        let sni: Vec<&SniPattern> = config.routes.iter().map(|r| &r.sni).collect();
        assert_eq!(
            sni,
            [
                &SniPattern::Exact("api.example.com".into()),
                &SniPattern::Wildcard("example.com".into()),
                &SniPattern::Any,
            ]
        );
        let rows = crate::wire::route_rows(&config);
        let shown: Vec<Option<&str>> = rows.iter().map(|r| r.sni.as_deref()).collect();
        assert_eq!(
            shown,
            [Some("api.example.com"), Some("*.example.com"), None]
        );
        let route = |sni: &str| {
            format!("[[route]]\nname = \"a\"\nsni = \"{sni}\"\norigins = [\"127.0.0.1:1\"]\n")
        };
        for (text, want) in [
            (
                format!("{CERT}{listener}{}", route("127.0.0.1")),
                "edge.toml:9: route[0].sni: \"127.0.0.1\" is an IP address",
            ),
            (
                format!("{CERT}{listener}{}", route("a.*.example.com")),
                "edge.toml:9: route[0].sni: \"a.*.example.com\" is not a DNS name",
            ),
            (
                format!(
                    "[dataplane]\nlisten = [\"127.0.0.1:8080\"]\n{}",
                    route("a.test")
                ),
                "edge.toml:5: route[0].sni: no [[tls_listener]]",
            ),
        ] {
            let msg = error_of(&text);
            assert!(msg.starts_with(want), "{msg}\nwanted: {want}");
        }
    }

    #[test]
    fn full_tls_settings() {
        let text = format!(
            "{CERT}names = [\"Example.com\", \"*.example.com\"]\ndefault = true\n\
             [[certificate]]\ncert = \"/r.pem\"\nkey = \"/r.key\"\n\
             [[tls_listener]]\nlisten = [\"0.0.0.0:443\", \"[::]:443\"]\ncertificates = [\"main\"]\n\
             client_auth = \"request\"\nclient_ca = \"/ca.pem\"\nalpn = []\nmin_version = \"1.3\"\n\
             ktls = \"require\"\n\
             [[tls_listener]]\nlisten = [\"127.0.0.1:8443\"]\n{ROUTE}"
        );
        let config = Config::from_toml(&text, "t").expect("valid");
        // Plain listeners stay at their default when [dataplane] says nothing.
        assert!(config.dataplane.listen.is_empty());
        let [main, second] = &config.tls.certificates[..] else {
            panic!("two certificates");
        };
        assert_eq!(main.id, "main");
        assert_eq!(
            main.names,
            Some(vec![
                NamePattern::Exact("example.com".into()),
                NamePattern::Wildcard("example.com".into())
            ])
        );
        assert_eq!(second.id, "certificate[1]");
        assert_eq!(second.names, None);
        let [a, b] = &config.tls.listeners[..] else {
            panic!("two listeners");
        };
        assert_eq!(a.certificates, Some(vec!["main".to_owned()]));
        assert_eq!(a.client_auth, ClientAuth::Request);
        assert_eq!(a.client_ca, Some(PathBuf::from("/ca.pem")));
        assert_eq!(a.alpn, Alpn::Off);
        assert_eq!(a.min_version, TlsVersion::Tls13);
        // `require` parses anywhere: the kernel is checked at start and by `wsedge --check`.
        assert_eq!(a.ktls, KtlsMode::Require);
        assert_eq!(b.ktls, KtlsMode::Auto, "the default");
        for (text, want) in [("off", KtlsMode::Off), ("auto", KtlsMode::Auto)] {
            let one = format!(
                "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nktls = \"{text}\"\n{ROUTE}"
            );
            let config = Config::from_toml(&one, "t").expect("valid");
            assert_eq!(config.tls.listeners[0].ktls, want);
        }
        let bad =
            format!("{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nktls = \"on\"\n{ROUTE}");
        let msg = error_of(&bad);
        assert!(
            msg.contains("ktls") && msg.contains("auto") && msg.contains("require"),
            "{msg}"
        );
        assert_eq!(b.certificates, None);
        assert_eq!(
            (b.client_auth, b.alpn, b.min_version),
            (ClientAuth::None, Alpn::Http11, TlsVersion::Tls12)
        );

        // With [dataplane] listen written, plain and TLS listeners live side by side.
        let both = format!("[dataplane]\nlisten = [\"127.0.0.1:8080\"]\n{text}");
        let config = Config::from_toml(&both, "t").expect("valid");
        assert_eq!(config.dataplane.listen.len(), 1);
    }

    #[test]
    fn tls_errors_name_line_and_field() {
        let cases: &[(String, &str)] = &[
            (
                format!("{CERT}names = [\"a b\"]\n{ROUTE}"),
                "edge.toml:5: certificate[0].names: \"a b\" is not a DNS name",
            ),
            (
                format!(
                    "{CERT}[[certificate]]\nid = \"main\"\ncert = \"/x\"\nkey = \"/y\"\n{ROUTE}"
                ),
                "edge.toml:6: certificate[1].id: duplicate certificate id \"main\"",
            ),
            (format!("{CERT}cert2 = 1\n{ROUTE}"), "unknown field `cert2`"),
            (
                format!("[[certificate]]\nkey = \"/k\"\n{ROUTE}"),
                "missing field `cert`",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nalpn = [\"h2\"]\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].alpn: \"h2\" is not served",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nclient_auth = \"require\"\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].client_ca: client_auth = \"require\" needs client_ca",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nclient_ca = \"/ca.pem\"\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].client_ca: only with client_auth",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\ncertificates = [\"other\"]\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].certificates: no [[certificate]] with id \"other\"",
            ),
            (
                format!("[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\n{ROUTE}"),
                "edge.toml:1: tls_listener[0]: a TLS listener needs a [[certificate]] to serve",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nmin_version = \"1.1\"\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].min_version: \"1.1\": must be \"1.2\" or \"1.3\"",
            ),
            (
                format!(
                    "[dataplane]\nlisten = [\"127.0.0.1:443\"]\n{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\n{ROUTE}"
                ),
                "edge.toml:8: tls_listener[0].listen: 127.0.0.1:443 is already a listener",
            ),
            (
                format!("{CERT}[[tls_listener]]\nlisten = [\"localhost:443\"]\n{ROUTE}"),
                "edge.toml:6: tls_listener[0].listen: \"localhost:443\" is not an IP:port address",
            ),
            (
                format!(
                    "{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:443\"]\nclient_auth = \"maybe\"\n{ROUTE}"
                ),
                "edge.toml:7: tls_listener[0].client_auth: unknown variant `maybe`",
            ),
            (
                "[dataplane]\nlisten = []\n".to_owned(),
                "edge.toml:2: dataplane.listen: needs at least one address (or a [[tls_listener]])",
            ),
        ];
        for (text, want) in cases {
            let msg = error_of(text);
            assert!(msg.contains(want), "got {msg:?}, want {want:?}");
        }
    }

    #[test]
    fn origin_tls_per_route() {
        let route = |extra: &str| format!("[[route]]\nname = \"r\"\n{extra}");
        let config = Config::from_toml(
            &route("origins = [\"wss://10.0.0.1:443\", \"wss://10.0.0.2:443/\"]\norigin_server_name = \"Origin.Example.com\"\n"),
            "t",
        )
        .expect("valid");
        let r = &config.routes[0];
        assert_eq!(r.origins.len(), 2);
        assert_eq!(
            r.origin_tls,
            Some(OriginTlsSpec {
                server_name: Some("origin.example.com".into()),
                ca: None
            })
        );
        let config = Config::from_toml(
            &route("origins = [\"10.0.0.1:443\"]\norigin_tls = true\norigin_ca = \"/ca.pem\"\n"),
            "t",
        )
        .expect("valid");
        assert_eq!(
            config.routes[0].origin_tls,
            Some(OriginTlsSpec {
                server_name: None,
                ca: Some("/ca.pem".into())
            })
        );
        let plain = Config::from_toml(&route("origins = [\"10.0.0.1:80\"]\n"), "t").expect("valid");
        assert_eq!(plain.routes[0].origin_tls, None);

        for (extra, want) in [
            (
                "origins = [\"wss://10.0.0.1:443\", \"10.0.0.2:80\"]\n",
                "edge.toml:3: route[0].origins: mixes wss:// and plain origins",
            ),
            (
                "origins = [\"10.0.0.1:80\"]\norigin_server_name = \"a.test\"\n",
                "edge.toml:4: route[0].origin_server_name: only with TLS to the origins",
            ),
            (
                "origins = [\"10.0.0.1:80\"]\norigin_ca = \"/ca.pem\"\n",
                "edge.toml:4: route[0].origin_ca: only with TLS",
            ),
            (
                "origins = [\"wss://10.0.0.1:443\"]\norigin_tls = false\n",
                "edge.toml:4: route[0].origin_tls: origin_tls = false contradicts wss:// origins",
            ),
            (
                "origins = [\"wss://10.0.0.1:443\"]\norigin_server_name = \"*.a.test\"\n",
                "edge.toml:4: route[0].origin_server_name: \"*.a.test\" is not a DNS name or IP address",
            ),
            (
                "function = \"echo\"\norigin_tls = true\n",
                "edge.toml:4: route[0].origin_tls: a function route has no origins",
            ),
            (
                "origins = [\"wss://origin.example.com:443\"]\n",
                "is not an IP:port address (or wss://IP:port)",
            ),
        ] {
            let msg = error_of(&route(extra));
            assert!(msg.contains(want), "got {msg:?}, want {want:?}");
        }
    }

    #[test]
    fn load_tls_names_the_missing_file() {
        let text = format!("{CERT}[[tls_listener]]\nlisten = [\"127.0.0.1:8443\"]\n{ROUTE}")
            .replace("/c.pem", "/nonexistent/wsedge-test/c.pem");
        let config = Config::from_toml(&text, "edge.toml").expect("parses: no file is read");
        let msg = config
            .load_tls("edge.toml")
            .expect_err("missing file")
            .to_string();
        assert!(
            msg.starts_with(
                "edge.toml: certificate \"main\": /nonexistent/wsedge-test/c.pem: cannot read:"
            ),
            "{msg}"
        );
        // A configuration without TLS loads nothing and succeeds.
        let plain = Config::from_toml(ROUTE, "edge.toml").expect("plain");
        let loaded = plain.load_tls("edge.toml").expect("nothing to load");
        assert!(loaded.store.listeners().is_empty() && loaded.origins.is_empty());
    }
}
