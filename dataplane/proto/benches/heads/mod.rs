//! Request heads shared by the handshake and firewall micro-benchmarks (a directory, so
//! cargo does not take it for a bench target of its own).

/// What a current Chromium sends to open a WebSocket (13 header lines).
pub(crate) const BROWSER_UPGRADE: &[u8] = b"GET /ws/chat?room=lobby&v=3 HTTP/1.1\r\n\
    Host: chat.example.com\r\n\
    Connection: Upgrade\r\n\
    Pragma: no-cache\r\n\
    Cache-Control: no-cache\r\n\
    User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36\r\n\
    Upgrade: websocket\r\n\
    Origin: https://chat.example.com\r\n\
    Sec-WebSocket-Version: 13\r\n\
    Accept-Encoding: gzip, deflate, br, zstd\r\n\
    Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n\
    Cookie: session=3f9a1c5e7b2d4f6a8c0e; theme=dark; _ga=GA1.1.123456789.1700000000\r\n\
    Sec-WebSocket-Key: x3JJHMbDL1EzLkh9GBhXDw==\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
    \r\n";
