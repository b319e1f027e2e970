//! The `__host` object the prelude is given: its general bindings (identity, console, text,
//! URL, timers, faults) here, the ones that act on connections in `conn_bindings`. Part of
//! `engine`, called once per runtime by `Engine::build`.

use std::cell::RefCell;
use std::rc::Rc;

use rquickjs::function::Opt;
use rquickjs::{ArrayBuffer, Ctx, Exception, Function, Object, TypedArray, Value};

use super::Identity;
use crate::state::{Fault, State};

/// Binary data from JavaScript: a `Uint8Array` (the prelude passes views as one) or an
/// `ArrayBuffer` (as a received message's data is: sent back without making a view of it).
pub(super) enum Binary<'js> {
    View(TypedArray<'js, u8>),
    Buffer(ArrayBuffer<'js>),
}

/// The bytes of binary data, copied.
///
/// rquickjs 0.14 has no safe accessor for a typed array's or a buffer's bytes: this is the
/// crate's only `unsafe`.
#[allow(unsafe_code)]
pub(super) fn copy_bytes(data: &Binary<'_>) -> Vec<u8> {
    // SAFETY: the slice borrows memory the engine owns only until JavaScript runs again; it
    // is copied at once, and no JavaScript runs while it is borrowed.
    let bytes = unsafe {
        match data {
            Binary::View(array) => array.as_bytes(),
            Binary::Buffer(buffer) => buffer.as_bytes(),
        }
    };
    bytes.map_or_else(Vec::new, <[u8]>::to_vec)
}

/// Message data from JavaScript: a string (text), a `Uint8Array` or an `ArrayBuffer`
/// (binary).
pub(super) fn data_of(ctx: &Ctx<'_>, data: &Value<'_>) -> rquickjs::Result<(bool, Vec<u8>)> {
    if let Some(s) = data.as_string() {
        return Ok((true, s.to_string()?.into_bytes()));
    }
    if let Some(object) = data.as_object() {
        if let Ok(array) = TypedArray::<u8>::from_object(object.clone()) {
            return Ok((false, copy_bytes(&Binary::View(array))));
        }
        if let Some(buffer) = ArrayBuffer::from_object(object.clone()) {
            return Ok((false, copy_bytes(&Binary::Buffer(buffer))));
        }
    }
    Err(Exception::throw_type(
        ctx,
        "expected a string or binary data",
    ))
}

/// The components `URL` exposes, in the prelude's order.
fn url_parts(url: &url::Url) -> Vec<String> {
    use url::quirks as q;
    vec![
        q::href(url).to_owned(),
        q::protocol(url).to_owned(),
        q::username(url).to_owned(),
        q::password(url).to_owned(),
        q::host(url).to_owned(),
        q::hostname(url).to_owned(),
        q::port(url).to_owned(),
        q::pathname(url).to_owned(),
        q::search(url).to_owned(),
        q::hash(url).to_owned(),
        q::origin(url),
    ]
}

pub(super) type St = Rc<RefCell<State>>;

/// The `__host` object: everything the prelude asks of the Rust side.
pub(super) fn bindings<'js>(
    ctx: &Ctx<'js>,
    state: &St,
    identity: &Identity,
) -> rquickjs::Result<Object<'js>> {
    let host = Object::new(ctx.clone())?;
    let name = Rc::clone(&identity.name);
    let info = vec![
        identity.name.to_string(),
        identity.version.to_string(),
        identity.worker.to_string(),
        identity.workers.to_string(),
    ];
    host.set("info", Function::new(ctx.clone(), move || info.clone())?)?;

    let n = Rc::clone(&name);
    // The scratch runtime a script is checked in (version 0) runs its module code once
    // before any version serves: its console output would be logged under no function.
    let quiet = identity.version == 0;
    host.set(
        "logOn",
        Function::new(ctx.clone(), move |level: i32| -> bool {
            let _ = &n;
            if quiet {
                return false;
            }
            match level {
                0 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::TRACE),
                1 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::DEBUG),
                2 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::INFO),
                3 => tracing::enabled!(target: "wsedge_js::console", tracing::Level::WARN),
                _ => tracing::enabled!(target: "wsedge_js::console", tracing::Level::ERROR),
            }
        })?,
    )?;
    let n = Rc::clone(&name);
    host.set(
        "log",
        Function::new(
            ctx.clone(),
            move |level: i32, message: String| match level {
                0 => tracing::trace!(target: "wsedge_js::console", function = %n, "{message}"),
                1 => tracing::debug!(target: "wsedge_js::console", function = %n, "{message}"),
                2 => tracing::info!(target: "wsedge_js::console", function = %n, "{message}"),
                3 => tracing::warn!(target: "wsedge_js::console", function = %n, "{message}"),
                _ => tracing::error!(target: "wsedge_js::console", function = %n, "{message}"),
            },
        )?,
    )?;

    // Text.
    host.set(
        "encode",
        Function::new(ctx.clone(), |ctx: Ctx<'js>, s: String| {
            TypedArray::<u8>::new(ctx, s.into_bytes())
        })?,
    )?;
    host.set(
        "decode",
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, data: TypedArray<'js, u8>, fatal: bool| -> rquickjs::Result<String> {
                let bytes = copy_bytes(&Binary::View(data));
                if fatal {
                    String::from_utf8(bytes)
                        .map_err(|_| Exception::throw_type(&ctx, "TextDecoder: invalid UTF-8"))
                } else {
                    Ok(String::from_utf8_lossy(&bytes).into_owned())
                }
            },
        )?,
    )?;

    // URL.
    host.set(
        "urlParse",
        Function::new(
            ctx.clone(),
            |input: String, base: Opt<String>| -> Option<Vec<String>> {
                let parsed = match base.0 {
                    Some(base) => url::Url::parse(&base).ok()?.join(&input).ok()?,
                    None => url::Url::parse(&input).ok()?,
                };
                Some(url_parts(&parsed))
            },
        )?,
    )?;
    host.set(
        "urlSet",
        Function::new(
            ctx.clone(),
            |href: String, part: i32, value: String| -> Option<Vec<String>> {
                use url::quirks as q;
                let mut url = url::Url::parse(&href).ok()?;
                let ok = match part {
                    0 => q::set_href(&mut url, &value).is_ok(),
                    1 => q::set_protocol(&mut url, &value).is_ok(),
                    2 => q::set_username(&mut url, &value).is_ok(),
                    3 => q::set_password(&mut url, &value).is_ok(),
                    4 => q::set_host(&mut url, &value).is_ok(),
                    5 => q::set_hostname(&mut url, &value).is_ok(),
                    6 => q::set_port(&mut url, &value).is_ok(),
                    7 => {
                        q::set_pathname(&mut url, &value);
                        true
                    }
                    8 => {
                        q::set_search(&mut url, &value);
                        true
                    }
                    9 => {
                        q::set_hash(&mut url, &value);
                        true
                    }
                    _ => false,
                };
                if !ok && part == 0 {
                    return None;
                }
                Some(url_parts(&url))
            },
        )?,
    )?;
    host.set(
        "formParse",
        Function::new(ctx.clone(), |s: String| -> Vec<Vec<String>> {
            url::form_urlencoded::parse(s.as_bytes())
                .map(|(k, v)| vec![k.into_owned(), v.into_owned()])
                .collect()
        })?,
    )?;
    host.set(
        "formSerialize",
        Function::new(ctx.clone(), |pairs: Vec<Vec<String>>| -> String {
            let mut out = url::form_urlencoded::Serializer::new(String::new());
            for pair in &pairs {
                if let [k, v] = pair.as_slice() {
                    out.append_pair(k, v);
                }
            }
            out.finish()
        })?,
    )?;

    // Timers.
    let st = Rc::clone(state);
    host.set(
        "setTimer",
        Function::new(ctx.clone(), move |delay: f64, repeat: bool| -> u64 {
            let delay = if delay.is_finite() && delay > 0.0 {
                delay as u64
            } else {
                0
            };
            st.borrow_mut().set_timer(delay, repeat)
        })?,
    )?;
    let st = Rc::clone(state);
    host.set(
        "clearTimer",
        Function::new(ctx.clone(), move |id: f64| {
            st.borrow_mut().clear_timer(id as u64);
        })?,
    )?;

    // Faults the prelude pins on a connection (or on none: -1).
    let st = Rc::clone(state);
    let n = Rc::clone(&name);
    host.set(
        "fault",
        Function::new(ctx.clone(), move |conn: f64, text: String| {
            let mut st = st.borrow_mut();
            st.errors += 1;
            if conn < 0.0 {
                tracing::warn!(function = %n, "script error: {text}");
                return;
            }
            let id = conn as u64;
            tracing::warn!(function = %n, conn = id, "script error, closing its socket: {text}");
            if let Some(c) = st.conns.get_mut(&id) {
                c.fault.get_or_insert(Fault::Error);
                st.touch(id);
            }
        })?,
    )?;
    super::conn_bindings::install(ctx, &host, state)?;
    Ok(host)
}
