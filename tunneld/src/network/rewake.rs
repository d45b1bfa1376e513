//! ipstack 1.0 can miss waking a writer: a write that found the send window full, or a
//! shutdown waiting for the last acknowledgement, registers its waker after the ACK that
//! should have woken it may already have been handled, and then sleeps for good. [`Rewake`]
//! polls such a pending write or shutdown again after a short delay, backing off while it
//! stays pending, so the connection always moves on. Reads are passed through untouched.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

const FIRST_DELAY: Duration = Duration::from_millis(10);
const MAX_DELAY: Duration = Duration::from_millis(500);

pub(crate) struct Rewake<S> {
    inner: S,
    timer: Pin<Box<Sleep>>,
    delay: Duration,
}

impl<S> Rewake<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            timer: Box::pin(tokio::time::sleep(FIRST_DELAY)),
            delay: FIRST_DELAY,
        }
    }

    /// Passes a result through; while it is pending, arms the timer to poll again.
    fn rearm<T>(&mut self, cx: &mut Context<'_>, result: Poll<T>) -> Poll<T> {
        if result.is_ready() {
            self.delay = FIRST_DELAY;
            return result;
        }
        self.timer.as_mut().reset(Instant::now() + self.delay);
        let _ = self.timer.as_mut().poll(cx);
        self.delay = (self.delay * 2).min(MAX_DELAY);
        result
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewake<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewake<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.rearm(cx, result)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        self.rearm(cx, result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let result = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.rearm(cx, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A writer that is pending `misses` times without ever waking its task.
    struct ForgetfulWriter {
        misses: usize,
        written: Vec<u8>,
    }

    impl AsyncWrite for ForgetfulWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.misses > 0 {
                self.misses -= 1;
                return Poll::Pending;
            }
            self.written.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_whose_wakeup_is_lost_still_completes() {
        let mut writer = Rewake::new(ForgetfulWriter {
            misses: 3,
            written: Vec::new(),
        });
        writer.write_all(b"moves on").await.expect("write");
        assert_eq!(writer.inner.written, b"moves on");
    }
}
