//! Helpers every backend uses to read its URL form and to check `new_lock`'s arguments, so
//! the rules are the same everywhere.

use std::time::Duration;

use super::limits::check_value_size;
use crate::{Error, LockOptions, Result, normalize_key};

/// The parts of a `scheme://[user:password@]host1:port1,host2:port2[/path][?query]` URL.
///
/// Several comma-separated hosts are not a valid URL authority, so such URLs cannot go through
/// `url::Url` whole; [`parse_multi_host_url`] splits them and parses path and query with the
/// `url` crate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MultiHostUrl {
    /// `(user, password)`, percent-decoded; the password is `""` when absent.
    pub credentials: Option<(String, String)>,
    /// `host:port` of each server, in order.
    pub hosts: Vec<String>,
    /// The path, percent-decoded, without the leading `/` (`""` when absent).
    pub path: String,
    /// The query pairs, decoded, in order.
    pub query: Vec<(String, String)>,
}

/// Splits a multi-host URL of `scheme` (see [`MultiHostUrl`]).
///
/// # Errors
///
/// [`Error::InvalidConfig`] (for `backend`) for another scheme, no host, or an unparsable
/// path, query or percent-encoding.
///
/// # Examples
///
/// ```
/// let url = kvstore_core::backend::parse_multi_host_url("zk", "zk", "zk://u:p%40@h1:1,h2:2/app?x=1")?;
/// assert_eq!(url.hosts, ["h1:1", "h2:2"]);
/// assert_eq!(url.credentials, Some(("u".into(), "p@".into())));
/// assert_eq!((url.path.as_str(), url.query[0].0.as_str()), ("app", "x"));
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn parse_multi_host_url(
    backend: &'static str,
    scheme: &str,
    url: &str,
) -> Result<MultiHostUrl> {
    refuse_fragment(backend, url)?;
    // Every message names the URL with its secrets hidden (`redact_url`).
    let shown = redact_url(url);
    let invalid = |msg: String| Error::invalid_config(backend, msg);
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| invalid(format!("{shown:?} is not a {scheme}:// URL")))?;
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((user, hosts)) => (Some(user), hosts),
        None => (None, authority),
    };
    let hosts: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if hosts.is_empty() {
        return Err(invalid(format!("{shown:?} names no host")));
    }
    for host in &hosts {
        // Each `host[:port]` must be a valid URL authority on its own (the url crate checks
        // the host syntax and that the port is a number below 65536).
        url::Url::parse(&format!("{scheme}://{host}"))
            .map_err(|e| invalid(format!("{shown:?}: host {host:?}: {e}")))?;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|e| invalid(format!("{shown:?}: {e}")))
    };
    let credentials = match userinfo {
        Some(userinfo) => {
            let (user, pass) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            Some((decode(user)?, decode(pass)?))
        }
        None => None,
    };
    // Path and query are parsed by the url crate, on a stand-in single host.
    let parsed = url::Url::parse(&format!("{scheme}://placeholder{tail}"))
        .map_err(|e| invalid(format!("{shown:?}: {e}")))?;
    let path = decode(parsed.path().trim_start_matches('/'))?;
    let query = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    Ok(MultiHostUrl {
        credentials,
        hosts,
        path,
        query,
    })
}

/// Refuses a URL with a fragment (`…#insecure`). kvstore's options are query options; a
/// fragment means nothing to kvstore, and some client libraries read one as a setting (the
/// redis crate takes `#insecure` as "do not verify the server's certificate"), so passing it
/// on could weaken TLS behind the user's back. An unencoded `#` anywhere starts a fragment
/// (RFC 3986 §3.5); a `#` in a password is written `%23`.
///
/// # Errors
///
/// [`Error::InvalidConfig`] (for `backend`) when `url` has a fragment.
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::refuse_fragment;
///
/// assert!(refuse_fragment("redis", "rediss://h:6380/0").is_ok());
/// assert!(refuse_fragment("redis", "rediss://h:6380/0#insecure").is_err());
/// ```
pub fn refuse_fragment(backend: &'static str, url: &str) -> Result<()> {
    if url.contains('#') {
        return Err(Error::invalid_config(
            backend,
            "the URL has a fragment (#…): kvstore takes options only as query options (?name=value), \
             and a fragment such as #insecure could turn off certificate checks; write a # in a \
             password as %23",
        ));
    }
    Ok(())
}

/// What a backend puts before every key of a store opened with the config option `prefix`
/// (a normalized directory, `""` for none): `""`, or the prefix and a `/`.
///
/// ```
/// use kvstore_core::backend::key_prefix;
///
/// assert_eq!(key_prefix(""), "");
/// assert_eq!(key_prefix("app/v1"), "app/v1/");
/// ```
pub fn key_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Query options whose values are secrets; [`redact_url`] hides them.
const SECRET_OPTIONS: [&str; 4] = ["password", "token", "secret", "auth"];

/// `url` with its secrets replaced by `***`: the password of the user information, and the
/// value of every query option whose name contains `password`, `token`, `secret` or `auth`.
/// Works on text that is not a valid URL too, so error messages about a malformed URL can
/// name it safely.
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::redact_url;
///
/// assert_eq!(redact_url("redis://u:pw@h:notaport/0"), "redis://u:***@h:notaport/0");
/// assert_eq!(redact_url("consul://h:8500?token=abc&prefix=p"), "consul://h:8500?token=***&prefix=p");
/// assert_eq!(redact_url("etcd://h1:1,h2:2"), "etcd://h1:1,h2:2");
/// ```
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{hosts}"),
            None => format!("{userinfo}@{hosts}"),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _))
                        if SECRET_OPTIONS
                            .iter()
                            .any(|s| name.to_ascii_lowercase().contains(s)) =>
                    {
                        format!("{name}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => tail.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// Parses a boolean option (`true` or `false`).
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the option for any other value.
pub fn bool_option(backend: &'static str, name: &str, value: &str) -> Result<bool> {
    value.parse().map_err(|_| {
        Error::invalid_config(backend, format!("{name}={value}: expected true or false"))
    })
}

/// Parses a duration option (`timeout=2s`, `500ms`, `1m`; humantime syntax).
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the option when `value` is not a duration.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// assert_eq!(kvstore_core::backend::duration_option("etcd", "timeout", "2s")?, Duration::from_secs(2));
/// assert!(kvstore_core::backend::duration_option("etcd", "timeout", "soon").is_err());
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn duration_option(backend: &'static str, name: &str, value: &str) -> Result<Duration> {
    humantime::parse_duration(value)
        .map_err(|e| Error::invalid_config(backend, format!("{name}={value}: {e}")))
}

/// Parses a size option in bytes (`max_value_size=1048576`).
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the option when `value` is not a whole number.
pub fn size_option(backend: &'static str, name: &str, value: &str) -> Result<usize> {
    value
        .parse()
        .map_err(|e| Error::invalid_config(backend, format!("{name}={value}: {e}")))
}

/// Parses an option with a fixed set of values (`auth=digest`), each standing for one `T`.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming the option and the values it takes for any other value.
///
/// # Examples
///
/// ```
/// use kvstore_core::backend::choice_option;
///
/// let modes = [("fast", 1), ("safe", 2)];
/// assert_eq!(choice_option("zk", "mode", "safe", &modes)?, 2);
/// assert!(choice_option("zk", "mode", "other", &modes).is_err());
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn choice_option<T: Copy>(
    backend: &'static str,
    name: &str,
    value: &str,
    choices: &[(&str, T)],
) -> Result<T> {
    choices
        .iter()
        .find(|(text, _)| *text == value)
        .map(|(_, choice)| *choice)
        .ok_or_else(|| {
            let expected: Vec<&str> = choices.iter().map(|(text, _)| *text).collect();
            Error::invalid_config(
                backend,
                format!("{name}={value}: expected one of {}", expected.join(", ")),
            )
        })
}

/// Walks a URL's query options into `config` the same way on every network backend: the TLS
/// options (`tls`, `tls_ca`, `tls_cert`, `tls_key`, `tls_server_name`) are checked together
/// ([`check_tls_url_options`](crate::backend::check_tls_url_options)), collected, and given to
/// `with_tls` once at the end if any was present; every other option goes to `option`, which
/// sets it on the config and returns whether it knows it.
///
/// # Errors
///
/// [`Error::InvalidConfig`] naming an option that neither the TLS options nor `option` know,
/// for conflicting TLS options, or whatever `option` returns for a value it refuses.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::TlsConfig;
/// use kvstore_core::backend::{duration_option, url_options};
///
/// #[derive(Default)]
/// struct Config { timeout: Duration, tls: Option<TlsConfig> }
/// let with_tls = |c: Config, tls| Config { tls: Some(tls), ..c };
///
/// let query = [("timeout", "2s"), ("tls_ca", "/ca.pem")];
/// let config = url_options("etcd", Config::default(), query, with_tls, |c, name, value| {
///     Ok(match name {
///         "timeout" => { c.timeout = duration_option("etcd", name, value)?; true }
///         _ => false,
///     })
/// })?;
/// assert_eq!(config.timeout, Duration::from_secs(2));
/// assert!(config.tls.is_some());
/// let unknown = [("colour", "red")];
/// assert!(url_options("etcd", Config::default(), unknown, with_tls, |_, _, _| Ok(false)).is_err());
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn url_options<'a, C>(
    backend: &'static str,
    mut config: C,
    query: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    with_tls: impl FnOnce(C, crate::TlsConfig) -> C,
    mut option: impl FnMut(&mut C, &str, &str) -> Result<bool>,
) -> Result<C> {
    crate::tls::check_tls_url_options(backend, query.clone())?;
    let mut tls = None;
    for (name, value) in query {
        if crate::tls::tls_url_option(&mut tls, backend, name, value)?
            || option(&mut config, name, value)?
        {
            continue;
        }
        return Err(Error::invalid_config(
            backend,
            format!("unknown option {name:?}"),
        ));
    }
    Ok(match tls {
        Some(tls) => with_tls(config, tls),
        None => config,
    })
}

/// Checks the arguments of `Store::new_lock` the same way on every backend, before any I/O:
/// normalizes `key`, fills in the default options, and checks that the TTL is at least
/// `min_ttl` and the lock's value fits in `max_value_size`. Returns the normalized key and the
/// options.
///
/// # Errors
///
/// `InvalidKey` for a bad key; [`Error::InvalidConfig`] for a TTL under `min_ttl` (or zero)
/// or over [`MAX_TTL`](crate::MAX_TTL);
/// `ValueTooLarge` for a value over the limit.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use kvstore_core::LockOptions;
/// use kvstore_core::backend::lock_arguments;
///
/// let (key, opts) = lock_arguments("etcd", "/locks/job/", None, Duration::ZERO, 1024)?;
/// assert_eq!((key.as_str(), opts.ttl), ("locks/job", Duration::from_secs(20)));
/// let zero = LockOptions::default().with_ttl(Duration::ZERO);
/// assert!(lock_arguments("etcd", "k", Some(&zero), Duration::ZERO, 1024).is_err());
/// # Ok::<(), kvstore_core::Error>(())
/// ```
pub fn lock_arguments(
    backend: &'static str,
    key: &str,
    opts: Option<&LockOptions>,
    min_ttl: Duration,
    max_value_size: usize,
) -> Result<(String, LockOptions)> {
    let key = normalize_key(key)?.to_owned();
    let opts = opts.cloned().unwrap_or_default();
    if opts.ttl.is_zero() {
        return Err(Error::invalid_config(
            backend,
            "lock TTL must be greater than zero",
        ));
    }
    if opts.ttl < min_ttl {
        return Err(Error::invalid_config(
            backend,
            format!("lock TTL must be at least {min_ttl:?}"),
        ));
    }
    super::limits::check_ttl(backend, opts.ttl)?;
    if let Some(value) = &opts.value {
        check_value_size(&key, value, max_value_size)?;
    }
    Ok((key, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_host_urls() {
        let u = parse_multi_host_url("etcd", "etcd", "etcd://h1:1,h2:2?timeout=2s&prefix=%2Fa")
            .unwrap();
        assert_eq!(u.hosts, ["h1:1", "h2:2"]);
        assert_eq!(u.credentials, None);
        assert_eq!(u.path, "");
        assert_eq!(
            u.query,
            [
                ("timeout".into(), "2s".into()),
                ("prefix".into(), "/a".into())
            ]
        );
        for bad in [
            "etcd://",
            "zk://h:1",
            "etcd//h:1",
            "etcd://u:%ff@h:1",
            "etcd://u:pw@127.0.0.1:notaport",
            "etcd://h:1,h:99999",
        ] {
            assert!(
                matches!(
                    parse_multi_host_url("etcd", "etcd", bad),
                    Err(Error::InvalidConfig { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn url_errors_never_carry_the_password() {
        for bad in [
            "etcd://u:secret-pw@127.0.0.1:notaport",
            "etcd://u:secret-pw@",
            "etcd://u:secret-pw@h:1/%ff?token=secret-pw",
        ] {
            let err = parse_multi_host_url("etcd", "etcd", bad).unwrap_err();
            let text = format!(
                "{err} {:?} {}",
                err,
                std::error::Error::source(&err).unwrap()
            );
            assert!(!text.contains("secret-pw"), "{bad}: {text}");
        }
        assert_eq!(redact_url("no scheme u:p@h"), "no scheme u:***@h");
        assert_eq!(
            redact_url("zk://h?auth_password=x&a=b"),
            "zk://h?auth_password=***&a=b"
        );
    }

    #[test]
    fn lock_arguments_check_ttl_and_value() {
        let opts = LockOptions::default().with_ttl(Duration::from_micros(10));
        assert!(lock_arguments("redis", "k", Some(&opts), Duration::from_millis(1), 8).is_err());
        assert!(lock_arguments("etcd", "k", Some(&opts), Duration::ZERO, 8).is_ok());
        let big = LockOptions::default().with_value("123456789");
        assert!(matches!(
            lock_arguments("etcd", "k", Some(&big), Duration::ZERO, 8),
            Err(Error::ValueTooLarge { .. })
        ));
        assert!(matches!(
            lock_arguments("etcd", "a//b", None, Duration::ZERO, 8),
            Err(Error::InvalidKey { .. })
        ));
    }
}
