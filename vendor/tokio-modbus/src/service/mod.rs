// SPDX-FileCopyrightText: Copyright (c) 2017-2025 slowtec GmbH <post@slowtec.de>
// SPDX-License-Identifier: MIT OR Apache-2.0

#[cfg(feature = "rtu")]
pub(crate) mod rtu;

#[cfg(feature = "tcp")]
pub(crate) mod tcp;

/// alsentry patch: read and write buffers of a client connection. tokio-util's default is
/// 8 KiB each; a Modbus ADU is at most 260 bytes, and a gateway keeps hundreds of connections
/// open (16 KiB x 400 = 6.5 MB of a 16 MiB budget). The buffers grow if ever needed.
#[cfg(any(feature = "rtu", feature = "tcp"))]
const CLIENT_BUFFER_CAPACITY: usize = 512;

#[cfg(any(feature = "rtu", feature = "tcp"))]
async fn disconnect<T, C>(framed: tokio_util::codec::Framed<T, C>) -> std::io::Result<()>
where
    T: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncWriteExt as _;

    framed
        .into_inner()
        .shutdown()
        .await
        .or_else(|err| match err.kind() {
            std::io::ErrorKind::NotConnected | std::io::ErrorKind::BrokenPipe => {
                // Already disconnected.
                Ok(())
            }
            _ => Err(err),
        })
}

/// Check that `req_hdr` is the same `Header` as `rsp_hdr`.
///
/// # Errors
///
/// If the 2 headers are different, an error message with the details will be returned.
#[cfg(any(feature = "rtu", feature = "tcp"))]
fn verify_response_header<H: Eq + std::fmt::Debug>(req_hdr: &H, rsp_hdr: &H) -> Result<(), String> {
    if req_hdr != rsp_hdr {
        return Err(format!(
            "expected/request = {req_hdr:?}, actual/response = {rsp_hdr:?}"
        ));
    }
    Ok(())
}
