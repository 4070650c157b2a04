// Server-sent events parsing for the web chat (the subset of the WHATWG
// event-stream format that the gateway uses). Kept apart from chat.js so the
// browser test can exercise it on its own.

// Feeds text chunks in, calls onData(payload) for each complete event's data.
// Comment lines (":" keep-alives) and other fields are ignored.
export class SSEParser {
  constructor(onData) {
    this.onData = onData;
    this.buffer = '';
    this.data = [];
  }

  push(text) {
    let pending = this.buffer + text;
    // A trailing "\r" may be the first half of a "\r\n" split across reads.
    const held = pending.endsWith('\r') ? '\r' : '';
    if (held) pending = pending.slice(0, -1);
    const lines = pending.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + held;
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === '') {
      if (this.data.length) {
        const payload = this.data.join('\n');
        this.data = [];
        this.onData(payload);
      }
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') this.data.push(value);
  }

  end() {
    if (this.buffer) this.line(this.buffer.replace(/\r$/, ''));
    this.buffer = '';
    this.line('');
  }
}
