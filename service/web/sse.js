// Server-sent events read from a fetch() body. EventSource cannot POST a problem or send an
// Authorization header, so the page reads the stream itself: events are separated by a blank line,
// `event:` names one, `data:` lines carry its JSON, lines starting with ':' are keep-alive comments.

/** Yields {event, data} for each event of `body` (a ReadableStream of bytes) until it ends. */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let carriageReturn = false; // a chunk that ends in \r: the \n of its \r\n may start the next one
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      let text = (carriageReturn ? "\r" : "") + value;
      carriageReturn = text.endsWith("\r");
      if (carriageReturn) text = text.slice(0, -1);
      buffer += text.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const parsed = parseBlock(block);
        if (parsed) yield parsed;
      }
    }
    const last = parseBlock(buffer);
    if (last) yield last;
  } finally {
    reader.releaseLock();
  }
}

/** One event's lines, or null for a block of comments only. */
export function parseBlock(block) {
  let event = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return null;
  return { event, data: JSON.parse(data.join("\n")) };
}
