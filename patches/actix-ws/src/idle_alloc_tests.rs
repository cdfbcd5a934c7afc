//! Patched in (see the workspace's `patches/README.md`): what an idle WebSocket's `Session` ->
//! response body channel holds on the heap.
//!
//! The test binary counts the bytes allocated and not yet freed by each thread, so the figures are
//! those of the code the test runs on its own thread.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    future::Future,
    pin::{pin, Pin},
    task::{Context, Poll, Waker},
};

use actix_web::{
    body::{BoxBody, MessageBody},
    http::header::{self, HeaderValue},
    test::TestRequest,
    web,
    web::Bytes,
    FromRequest,
};

thread_local! {
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get() + delta));
}

fn live_bytes() -> isize {
    LIVE_BYTES.with(Cell::get)
}

struct CountingAllocator;

// SAFETY: every call is forwarded to `System` unchanged; only the sizes are counted.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc(layout);
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = System.alloc_zeroed(layout);
        if !ptr.is_null() {
            count(layout.size() as isize);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = System.realloc(ptr, layout, new_size);
        if !new.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn ready<F: Future>(fut: F) -> F::Output {
    match pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("future should be ready"),
    }
}

fn open_socket() -> (BoxBody, crate::Session, crate::MessageStream) {
    let (req, mut payload) = TestRequest::default()
        .insert_header((header::UPGRADE, HeaderValue::from_static("websocket")))
        .insert_header((header::CONNECTION, HeaderValue::from_static("upgrade")))
        .insert_header((
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        ))
        .insert_header((
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("x3JJHMbDL1EzLkh9GBhXDw=="),
        ))
        .to_http_parts();
    let payload = ready(web::Payload::from_request(&req, &mut payload)).unwrap();

    let (response, session, stream) = crate::handle(&req, payload).unwrap();
    let mut body = response.into_body();
    assert!(poll_body(&mut body).is_pending());

    (body, session, stream)
}

fn poll_body(body: &mut BoxBody) -> Poll<Option<Result<Bytes, Box<dyn std::error::Error>>>> {
    Pin::new(body).poll_next(&mut Context::from_waker(Waker::noop()))
}

/// The heap bytes that the response body and the `Session` of a socket hold (those freed when both
/// are dropped; the `MessageStream` is kept), while nothing has been sent, and once a message has
/// gone through and the body waits for the next. actix-ws 0.4.0's tokio mpsc held a 32-slot block
/// and its header (~1.8 KB) from creation to the end of the socket, and the body kept its message
/// queue's buffer after the first message; the patched channel holds no queue buffer while empty.
#[test]
fn idle_socket_holds_no_channel_buffer() {
    let held = |body: BoxBody, session: crate::Session| {
        let live = live_bytes();
        drop((body, session));
        live - live_bytes()
    };

    let (body, session, stream) = open_socket();
    let idle = held(body, session);
    drop(stream);

    let (mut body, mut session, stream) = open_socket();
    ready(session.text("hello")).unwrap();
    match poll_body(&mut body) {
        Poll::Ready(Some(Ok(frame))) => assert_eq!(&frame[..], b"\x81\x05hello"),
        _ => panic!("the body should yield the text frame"),
    }
    assert!(poll_body(&mut body).is_pending());
    let after_message = held(body, session);
    drop(stream);

    assert!(
        idle < 512,
        "an idle socket's body and session should hold under 512 bytes (272 on 0.4.0 patched, 2,128 unpatched), hold {idle}"
    );
    assert!(
        after_message <= idle,
        "the channel should hold nothing once the body has taken every message: \
         {after_message} bytes after a message, {idle} before"
    );
}
