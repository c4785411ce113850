//! systemd's readiness protocol (`sd_notify`), for `Type=notify` units:
//! one datagram to the socket named by `NOTIFY_SOCKET`, such as `READY=1`
//! or `STOPPING=1`. Without that variable (not under systemd) nothing is
//! sent. Written here rather than linking libsystemd: it is one datagram.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`KEY=value` lines) to systemd; whether it was sent.
/// Failures are logged at debug: a supervisor that does not listen is not
/// the role's problem.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let sent = (|| -> std::io::Result<usize> {
        let socket = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        match bytes.strip_prefix(b"@") {
            // An abstract socket (Linux): `@name`.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(state.as_bytes(), &address)
            }
            None => socket.send_to(state.as_bytes(), &path),
        }
    })();
    match sent {
        Ok(_) => true,
        Err(error) => {
            tracing::debug!("NOTIFY_SOCKET {}: {error}", path.to_string_lossy());
            false
        }
    }
}

/// Tells systemd `READY=1` once `lifecycle` is ready (the stop signal's
/// handler says `STOPPING=1`: it must go out before the process ends).
pub async fn follow(lifecycle: crate::Lifecycle) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    loop {
        match lifecycle.phase() {
            crate::Phase::Ready => {
                notify("READY=1\nSTATUS=ready");
                return;
            }
            crate::Phase::Draining => return,
            crate::Phase::Starting => {}
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Tells systemd the role is stopping (a drain began).
pub fn stopping() {
    notify("STOPPING=1\nSTATUS=draining: finishing transfers in flight");
}
