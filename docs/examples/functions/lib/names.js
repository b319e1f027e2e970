// Names for the chat example: rooms from the path, people from the query string.
const ROOM = /^\/chat\/([A-Za-z0-9_-]{1,64})$/;

export function roomOf(pathname) {
  const m = ROOM.exec(pathname);
  return m ? m[1] : null;
}

export function nameOf(raw) {
  const name = (raw || "").replace(/[^\p{L}\p{N} _.-]/gu, "").trim().slice(0, 32);
  return name || "anonymous";
}
