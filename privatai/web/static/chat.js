// PrivatAI web chat: plain ES module, no dependencies, no build step.
//
// Privacy: the conversation lives in the `history` array of this page only
// (no localStorage, no cookies), so closing or reloading the tab forgets it.
// Safety: model output is only ever inserted as text (textContent / text
// nodes), never parsed as HTML.

import { SSEParser } from './sse.js';

// The API sits next to the static folder: /webchat/static/chat.js ->
// /webchat/api/. Deriving it keeps the page working under a path prefix.
const API = new URL('../api/', import.meta.url);

// ---------------------------------------------------------------------------
// Strings: every user-visible text, in one place.

const STRINGS = {
  de: {
    title: 'Chat',
    skipToInput: 'Zur Eingabe springen',
    modelLabel: 'Modell',
    newChat: 'Neuer Chat',
    langToggle: 'English',
    langToggleLabel: 'Switch to English',
    intro: 'Ihre Unterhaltung bleibt nur in diesem Browser-Tab und wird nirgends gespeichert.',
    messagesLabel: 'Unterhaltung',
    promptLabel: 'Nachricht',
    promptPlaceholder: 'Nachricht schreiben…',
    send: 'Senden',
    stop: 'Stopp',
    hint: 'Enter sendet, Umschalt+Enter für eine neue Zeile, Esc stoppt.',
    thinking: 'Gedankengang',
    stopped: 'Angehalten.',
    truncated: 'Die Antwort wurde am Längenlimit des Web-Chats abgeschnitten.',
    tokens: (n) => `${n} Tokens`,
    loadingModels: 'Modelle werden geladen…',
    noModels: 'Zurzeit ist kein Modell verfügbar.',
    modelsFailed: 'Die Modellliste konnte nicht geladen werden.',
    networkError: 'Keine Verbindung zum Server. Bitte prüfen Sie Ihre Verbindung und versuchen Sie es erneut.',
    streamCut: 'Die Verbindung wurde unterbrochen, bevor die Antwort vollständig war.',
    streamError: (message) => `Die Antwort wurde unterbrochen: ${message}`,
    serverError: (status) => `Der Server hat mit einem Fehler geantwortet (HTTP ${status}).`,
    rateLimit: {
      requests_per_minute_exceeded: 'Sie haben in kurzer Zeit viele Nachrichten gesendet.',
      tokens_per_day_exceeded: 'Ihr Tageskontingent im Web-Chat ist aufgebraucht.',
      concurrent_streams_exceeded: 'Es läuft bereits eine Antwort für Sie.',
      default: 'Der Web-Chat ist aus Fairness-Gründen begrenzt.',
    },
    retryIn: (when) => `Bitte versuchen Sie es ${when} erneut.`,
    retryAt: (when, time) => `Bitte versuchen Sie es ${when} (ab ${time} Uhr) erneut.`,
    retryLater: 'Bitte versuchen Sie es etwas später erneut.',
    apiHint: 'Mit einem API-Schlüssel gibt es kein solches Limit.',
  },
  en: {
    title: 'Chat',
    skipToInput: 'Skip to message input',
    modelLabel: 'Model',
    newChat: 'New chat',
    langToggle: 'Deutsch',
    langToggleLabel: 'Auf Deutsch umschalten',
    intro: 'Your conversation stays in this browser tab only and is not stored anywhere.',
    messagesLabel: 'Conversation',
    promptLabel: 'Message',
    promptPlaceholder: 'Write a message…',
    send: 'Send',
    stop: 'Stop',
    hint: 'Enter sends, Shift+Enter for a new line, Esc stops.',
    thinking: 'Thinking',
    stopped: 'Stopped.',
    truncated: 'The answer was cut off at the web chat’s length limit.',
    tokens: (n) => `${n} tokens`,
    loadingModels: 'Loading models…',
    noModels: 'No model is available right now.',
    modelsFailed: 'Could not load the list of models.',
    networkError: 'Could not reach the server. Please check your connection and try again.',
    streamCut: 'The connection was interrupted before the answer was complete.',
    streamError: (message) => `The answer was interrupted: ${message}`,
    serverError: (status) => `The server answered with an error (HTTP ${status}).`,
    rateLimit: {
      requests_per_minute_exceeded: 'You have sent a lot of messages in a short time.',
      tokens_per_day_exceeded: 'You have used up today’s web chat allowance.',
      concurrent_streams_exceeded: 'An answer for you is already in progress.',
      default: 'The web chat is limited for fairness.',
    },
    retryIn: (when) => `Please try again ${when}.`,
    retryAt: (when, time) => `Please try again ${when} (from ${time}).`,
    retryLater: 'Please try again a little later.',
    apiHint: 'API keys have no such limit.',
  },
};

function initialLanguage() {
  for (const tag of navigator.languages || [navigator.language || 'en']) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (base in STRINGS) return base;
  }
  return 'en';
}

// ---------------------------------------------------------------------------
// State (memory only).

const state = {
  lang: initialLanguage(),
  history: [], // [{role, content}] sent whole with every request
  controller: null, // AbortController of the running request
  notice: null, // {kind, render: (t) => string} so it re-renders on language switch
};

const $ = (id) => document.getElementById(id);
const el = {};

function t() {
  return STRINGS[state.lang];
}

// ---------------------------------------------------------------------------
// Language

function applyLanguage() {
  const strings = t();
  document.documentElement.lang = state.lang;
  for (const node of document.querySelectorAll('[data-i18n]')) {
    const value = strings[node.dataset.i18n];
    if (typeof value === 'string') node.textContent = value;
  }
  for (const node of document.querySelectorAll('[data-i18n-placeholder]')) {
    node.placeholder = strings[node.dataset.i18nPlaceholder];
  }
  for (const node of document.querySelectorAll('[data-i18n-aria-label]')) {
    node.setAttribute('aria-label', strings[node.dataset.i18nAriaLabel]);
  }
  // Message metadata is stored as keys, so it follows the language too.
  for (const meta of el.messages.querySelectorAll('.meta')) renderMeta(meta);
  renderNotice();
}

// ---------------------------------------------------------------------------
// Notices (errors and rate limits)

function showNotice(kind, render, retryAfter = null) {
  state.notice = { kind, render, retryAfter };
  renderNotice();
}

function clearNotice() {
  state.notice = null;
  renderNotice();
}

function renderNotice() {
  if (!state.notice) {
    el.notice.hidden = true;
    el.notice.textContent = '';
    delete el.notice.dataset.kind;
    delete el.notice.dataset.retryAfter;
    return;
  }
  el.notice.dataset.kind = state.notice.kind;
  // For tests and assistive tooling: the raw seconds behind the wording.
  if (state.notice.retryAfter != null) el.notice.dataset.retryAfter = String(state.notice.retryAfter);
  else delete el.notice.dataset.retryAfter;
  el.notice.textContent = state.notice.render(t());
  el.notice.hidden = false;
}

// Retry-After is either delta-seconds or an HTTP date (RFC 9110).
function parseRetryAfter(value) {
  if (!value) return null;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed);
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return null;
  return Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

function describeRetry(strings, seconds, retryAt) {
  if (seconds == null) return strings.retryLater;
  const rtf = new Intl.RelativeTimeFormat(state.lang, { numeric: 'auto' });
  let when;
  if (seconds < 90) when = rtf.format(Math.max(1, seconds), 'second');
  else if (seconds < 90 * 60) when = rtf.format(Math.ceil(seconds / 60), 'minute');
  else when = rtf.format(Math.ceil(seconds / 3600), 'hour');
  if (seconds < 90 * 60) return strings.retryIn(when);
  const time = new Intl.DateTimeFormat(state.lang, { hour: '2-digit', minute: '2-digit' }).format(retryAt);
  return strings.retryAt(when, time);
}

function rateLimitNotice(code, retryAfterHeader) {
  const seconds = parseRetryAfter(retryAfterHeader);
  const retryAt = new Date(Date.now() + (seconds || 0) * 1000);
  showNotice('rate-limit', (strings) => {
    const reason = strings.rateLimit[code] || strings.rateLimit.default;
    return `${reason} ${describeRetry(strings, seconds, retryAt)} ${strings.apiHint}`;
  }, seconds);
}

// ---------------------------------------------------------------------------
// Models

async function loadModels() {
  el.model.replaceChildren(new Option(t().loadingModels, ''));
  el.model.disabled = true;
  let ids = [];
  try {
    const response = await fetch(new URL('models', API), { headers: { Accept: 'application/json' } });
    if (!response.ok) throw await httpError(response);
    const body = await response.json();
    ids = (Array.isArray(body.data) ? body.data : []).map((m) => m && m.id).filter((id) => typeof id === 'string');
  } catch (error) {
    el.model.replaceChildren();
    showError(error, (s) => s.modelsFailed);
    updateControls();
    return;
  }
  el.model.replaceChildren(...ids.map((id) => new Option(id, id)));
  el.model.disabled = ids.length === 0;
  if (ids.length === 0) showNotice('error', (s) => s.noModels);
  updateControls();
}

// ---------------------------------------------------------------------------
// Errors from HTTP responses

class HttpError extends Error {
  constructor(status, message, code, retryAfter) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.serverMessage = message;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

// Reads an OpenAI error body ({"error": {"message", "code", ...}}) if there is one.
async function httpError(response) {
  let message = null;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = typeof body.error === 'string' ? body.error : body.error.message;
      code = body.error.code ?? null;
    }
  } catch {
    // Not JSON (a proxy's HTML error page): fall back to the status line.
  }
  return new HttpError(response.status, message, code, response.headers.get('Retry-After'));
}

// A failure after the answer began; renders in the current language.
class StreamError extends Error {
  constructor(render) {
    super('stream error');
    this.render = render;
  }
}

function showError(error, fallback) {
  if (error instanceof StreamError) {
    showNotice('error', error.render);
  } else if (error instanceof HttpError && error.status === 429) {
    rateLimitNotice(error.code, error.retryAfter);
  } else if (error instanceof HttpError) {
    const { serverMessage, status } = error;
    showNotice('error', (s) => serverMessage || s.serverError(status));
  } else if (error instanceof TypeError) {
    // fetch() rejects with TypeError when the network fails.
    showNotice('error', (s) => s.networkError);
  } else {
    const message = error && error.message;
    showNotice('error', (s) => message || (fallback ? fallback(s) : s.networkError));
  }
}

// ---------------------------------------------------------------------------
// Rendering messages

function addUserMessage(text) {
  const node = $('user-message-template').content.firstElementChild.cloneNode(true);
  node.querySelector('.text').textContent = text;
  el.messages.append(node);
  el.intro.hidden = true;
  return node;
}

function addAssistantMessage() {
  const node = $('assistant-message-template').content.firstElementChild.cloneNode(true);
  // Templates are not translated by applyLanguage; do it for this clone.
  node.querySelector('summary').textContent = t().thinking;
  el.messages.append(node);
  return {
    node,
    answer: node.querySelector('.answer'),
    thinking: node.querySelector('.thinking'),
    thinkingText: node.querySelector('.thinking-text'),
    meta: node.querySelector('.meta'),
    content: '',
  };
}

function renderMeta(meta) {
  const strings = t();
  const parts = [];
  if (meta.dataset.stopped) parts.push(strings.stopped);
  if (meta.dataset.truncated) parts.push(strings.truncated);
  if (meta.dataset.tokens) parts.push(strings.tokens(Number(meta.dataset.tokens)));
  meta.textContent = parts.join(' · ');
  meta.hidden = parts.length === 0;
}

function nearBottom() {
  const c = el.conversation;
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

function scrollToBottom() {
  el.conversation.scrollTop = el.conversation.scrollHeight;
}

// ---------------------------------------------------------------------------
// Sending

function updateControls() {
  const streaming = state.controller !== null;
  document.documentElement.dataset.state = streaming ? 'streaming' : 'idle';
  el.send.hidden = streaming;
  el.stop.hidden = !streaming;
  el.send.disabled = streaming || !el.model.value;
  el.model.disabled = streaming || el.model.options.length === 0 || !el.model.value;
  el.newChat.disabled = streaming;
}

async function send() {
  const text = el.prompt.value.trim();
  if (!text || state.controller || !el.model.value) return;
  clearNotice();

  const userTurn = { role: 'user', content: text };
  state.history.push(userTurn);
  const userNode = addUserMessage(text);
  const reply = addAssistantMessage();
  el.prompt.value = '';
  scrollToBottom();

  const controller = new AbortController();
  state.controller = controller;
  updateControls();
  el.stop.focus();

  let finishReason = null;
  let failed = null;
  try {
    finishReason = await stream(controller, reply);
  } catch (error) {
    failed = error;
  } finally {
    state.controller = null;
  }
  const stopped = controller.signal.aborted;
  reply.answer.setAttribute('aria-busy', 'false');

  if (reply.content === '' && (failed || stopped)) {
    // No answer arrived: undo the turn and give the text back, so a rate
    // limit, an error or an early stop costs the user no typing.
    state.history.splice(state.history.indexOf(userTurn), 1);
    userNode.remove();
    reply.node.remove();
    el.intro.hidden = el.messages.children.length > 0;
    el.prompt.value = text;
  } else {
    state.history.push({ role: 'assistant', content: reply.content });
    if (stopped) reply.meta.dataset.stopped = '1';
    if (finishReason === 'length') reply.meta.dataset.truncated = '1';
    renderMeta(reply.meta);
  }
  if (failed && !stopped) showError(failed);
  reply.node.dataset.done = stopped ? 'stopped' : failed ? 'error' : 'complete';
  updateControls();
  el.prompt.focus();
}

// Runs one request; returns the finish_reason, throws on errors.
// An abort is not an error: whatever arrived stays on the page.
async function stream(controller, reply) {
  let response;
  try {
    response = await fetch(new URL('chat/completions', API), {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ model: el.model.value, messages: state.history, stream: true }),
      signal: controller.signal,
      cache: 'no-store',
    });
  } catch (error) {
    if (controller.signal.aborted) return null;
    throw error;
  }
  if (!response.ok) throw await httpError(response);

  let finishReason = null;
  let done = false;
  let inBandError = null;
  const parser = new SSEParser((payload) => {
    if (done) return;
    if (payload === '[DONE]') {
      done = true;
      return;
    }
    let chunk;
    try {
      chunk = JSON.parse(payload);
    } catch {
      return; // a malformed event should not end a good answer
    }
    if (chunk.error) {
      inBandError = chunk.error;
      return; // [DONE] follows (or the stream closes)
    }
    const choice = Array.isArray(chunk.choices) ? chunk.choices[0] : null;
    const delta = (choice && choice.delta) || {};
    const follow = nearBottom();
    // The gateway may send the same reasoning under both names: use one.
    const thinking = delta.thinking ?? delta.reasoning_content ?? delta.reasoning;
    if (typeof thinking === 'string' && thinking) {
      reply.thinking.hidden = false;
      reply.thinkingText.append(thinking);
    }
    if (typeof delta.content === 'string' && delta.content) {
      reply.content += delta.content;
      reply.answer.append(delta.content);
    }
    if (choice && choice.finish_reason) finishReason = choice.finish_reason;
    if (chunk.usage && Number.isFinite(chunk.usage.total_tokens)) {
      reply.meta.dataset.tokens = String(chunk.usage.total_tokens);
    }
    if (follow) scrollToBottom();
  });

  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  try {
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      parser.push(decoder.decode(value, { stream: true }));
    }
    if (!done) parser.push(decoder.decode());
    if (!done) parser.end();
  } catch (error) {
    if (controller.signal.aborted) return finishReason;
    throw error;
  } finally {
    if (done) reader.cancel().catch(() => {});
  }
  if (inBandError) {
    const message = inBandError.message;
    throw new StreamError((strings) => (message ? strings.streamError(message) : strings.streamCut));
  }
  if (!done && !finishReason) throw new StreamError((strings) => strings.streamCut);
  return finishReason;
}

function stop() {
  if (state.controller) state.controller.abort();
}

function newChat() {
  if (state.controller) return;
  state.history = [];
  el.messages.replaceChildren();
  el.intro.hidden = false;
  clearNotice();
  el.prompt.focus();
}

// ---------------------------------------------------------------------------
// Wiring

function init() {
  Object.assign(el, {
    model: $('model'),
    prompt: $('prompt'),
    send: $('send'),
    stop: $('stop'),
    notice: $('notice'),
    messages: $('messages'),
    conversation: $('conversation'),
    intro: $('intro'),
    newChat: $('new-chat'),
    langToggle: $('lang-toggle'),
    composer: $('composer'),
  });

  el.composer.addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  el.prompt.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') stop();
  });
  el.stop.addEventListener('click', stop);
  el.newChat.addEventListener('click', newChat);
  el.model.addEventListener('change', updateControls);
  el.langToggle.addEventListener('click', () => {
    state.lang = state.lang === 'de' ? 'en' : 'de';
    applyLanguage();
  });

  applyLanguage();
  updateControls();
  loadModels();
  el.prompt.focus();
}

// Module scripts run after parsing, so the DOM is ready.
init();
