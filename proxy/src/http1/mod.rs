//! HTTP/1.1 framing, by hand on top of httparse: request and response heads with their limits
//! and framing rules ([`head`]), body framing ([`body`]), and writing heads ([`write`]).
//! The rules follow RFC 9112 strictly: anything ambiguous is refused, never repaired.
pub mod body;
pub mod head;
pub mod write;
