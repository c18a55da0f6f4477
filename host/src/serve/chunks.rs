//! An HTTP body of byte chunks sent as they are: a JSON header and each tensor's own buffer, written
//! with vectored writes instead of being copied into one body first.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// A body of chunks, with its exact length (so it goes with `Content-Length`, not chunked encoding).
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    /// The chunks, in order; empty ones are left out.
    pub fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Chunks { chunks, remaining }
    }

    /// An OIP message: its JSON `header`, then the tensors' bytes, each in its own buffer (moved, not
    /// copied).
    pub fn message(header: Vec<u8>, tensors: impl IntoIterator<Item = Vec<u8>>) -> Chunks {
        Chunks::new(std::iter::once(Bytes::from(header)).chain(tensors.into_iter().map(Bytes::from)))
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(this.chunks.pop_front().map(|chunk| {
            this.remaining -= chunk.len() as u64;
            Ok(Frame::data(chunk))
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn chunks_arrive_in_order_with_their_exact_length() {
        let body = Chunks::new([Bytes::from_static(b"{}"), Bytes::new(), Bytes::from(vec![1u8, 2, 3])]);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(body.chunks.len(), 2, "the empty chunk is left out");
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"{}\x01\x02\x03");
    }
}
