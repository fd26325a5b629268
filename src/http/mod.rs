//! Pure HTTP/1.1 logic for the proxy: request-head parsing and validation, header rewriting,
//! body framing, and locally generated responses. No I/O here: everything is fed bytes and
//! tested byte by byte.
