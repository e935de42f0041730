// The mfoundry console. Plain DOM (no framework, nothing loaded from elsewhere); message
// content is only ever set as text, never as markup. Every call goes to /ui/api/v1 with the
// session cookie, and every change carries the session's CSRF token.
'use strict';

// `page` counts page changes: an answer that arrives after the page changed is dropped.
const state = { session: null, timer: null, page: 0, previous: null, rows: new Map() };

// ---------------------------------------------------------------------------------------
// Small helpers

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function main() { return document.getElementById('main'); }

function show(...nodes) {
  const target = main();
  target.replaceChildren(...nodes);
}

function can(role) {
  const order = ['viewer', 'operator', 'admin'];
  return state.session && order.indexOf(state.session.role) >= order.indexOf(role);
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  if (seconds < 60) return `${seconds.toFixed(0)} s`;
  if (seconds < 3600) return `${(seconds / 60).toFixed(0)} min`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / 86400).toFixed(1)} d`;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function call(method, path, body, refresh) {
  const headers = { 'Accept': 'application/json' };
  // The page's own periodic refreshes do not keep the session open.
  if (refresh) headers['X-Console-Refresh'] = '1';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.session) headers['X-CSRF-Token'] = state.session.csrf;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin', cache: 'no-store',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
  if (response.status === 401 && path.startsWith('/ui/api/')) {
    state.session = null;
    renderLogin('Your session ended. Sign in again.');
    throw new ApiError(401, 'signed out');
  }
  if (!response.ok) throw new ApiError(response.status, (data && data.error) || `HTTP ${response.status}`);
  return data;
}

const api = (method, path, body, refresh) => call(method, '/ui/api/v1' + path, body, refresh);

function failure(error) {
  if (error instanceof ApiError && error.status === 401) return null;
  return el('p', { class: 'error', role: 'alert', text: error.message || String(error) });
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && String(value).trim() !== '') search.set(key, String(value).trim());
  }
  const text = search.toString();
  return text ? '?' + text : '';
}

// ---------------------------------------------------------------------------------------
// Sign in, sign out, navigation

function renderLogin(message) {
  stopPolling();
  state.page += 1;
  state.search = undefined;
  state.rows.clear();
  state.previous = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('signout').hidden = true;
  document.getElementById('who').textContent = '';
  const token = el('input', { id: 'token', name: 'token', type: 'password', autocomplete: 'off', required: true, 'aria-describedby': 'token-help' });
  const problem = el('p', { class: 'error', role: 'alert' });
  const form = el('form', { class: 'login', onsubmit: async (event) => {
    event.preventDefault();
    problem.textContent = '';
    try {
      state.session = await call('POST', '/ui/login', { token: token.value });
      token.value = '';
      if (!location.hash || location.hash === '#/login') location.hash = '#/overview';
      else route();
    } catch (error) {
      problem.textContent = error.message;
    }
  } },
  el('h1', { text: 'Sign in' }),
  message ? el('p', { class: 'notice', text: message }) : null,
  el('label', { for: 'token' }, 'Admin token', token),
  el('p', { id: 'token-help', class: 'muted', text: 'A token from ADMIN_TOKENS_FILE, or the data directory\'s admin.token. It is sent once; the console then keeps a session cookie.' }),
  el('div', { class: 'actions' }, el('button', { id: 'signin', class: 'primary', type: 'submit', text: 'Sign in' })),
  problem);
  show(form);
  token.focus();
}

async function signOut() {
  try { await call('POST', '/ui/logout'); } catch (_) { /* signed out either way */ }
  state.session = null;
  renderLogin('Signed out.');
}

function markNav(page) {
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.page === page) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
    if (link.dataset.role) link.hidden = !can(link.dataset.role);
  }
}

function stopPolling() {
  if (state.timer) clearTimeout(state.timer);
  state.timer = null;
}

function route() {
  stopPolling();
  state.page += 1;
  if (!state.session) { renderLogin(); return; }
  document.getElementById('nav').hidden = false;
  document.getElementById('signout').hidden = false;
  document.getElementById('who').textContent = `${state.session.token_id} (${state.session.role})`;
  const parts = (location.hash || '#/overview').slice(2).split('/').map((part) => {
    try { return decodeURIComponent(part); } catch (_) { return part; }
  });
  const page = parts[0] || 'overview';
  markNav(page);
  if (page === 'messages' && parts[1]) renderMessage(parts[1]);
  else if (page === 'messages') renderMessages();
  else if (page === 'dlq') renderDlq(parts[1] || undefined);
  else if (page === 'audit' && can('operator')) renderAudit();
  else renderOverview();
}

// ---------------------------------------------------------------------------------------
// Overview

// A connector's state comes from the server (stats `state`): stalled (work queued, the
// oldest waiting over 10 s, nothing delivered for 10 s), failing (a dead letter in the last
// 15 minutes and no delivery since), retrying, paused, delivering, idle; worst first.
const SEVERITY = { stalled: 0, failing: 1, retrying: 2, paused: 3, delivering: 4, idle: 5 };

function renderOverview() {
  const holder = el('div', { id: 'overview' }, el('p', { class: 'muted', text: 'Loading…' }));
  show(el('h1', { text: 'Overview' }), holder);
  const page = state.page;
  let first = true;
  const refresh = async () => {
    try {
      const stats = await api('GET', '/stats', undefined, !first);
      first = false;
      if (page !== state.page) return;
      const now = Date.now();
      holder.replaceChildren(...overviewTables(stats, now).filter(Boolean));
      state.previous = { stats, at: now };
    } catch (error) {
      if (page !== state.page || error.status === 401) return;
      const shown = failure(error);
      if (shown) holder.replaceChildren(shown);
    }
    if (page === state.page) state.timer = setTimeout(refresh, 2000);
  };
  refresh();
}

// The head of the queue's failures: the downstream's words for operators (they can hold
// patient data), the count only for viewers.
function lastError(connector) {
  if (connector.state === 'failing') return connector.last_error || 'a message was dead-lettered';
  if (!connector.head_attempts) return '';
  const attempts = `${connector.head_attempts} failed ${connector.head_attempts === 1 ? 'attempt' : 'attempts'}`;
  return connector.last_error ? `${connector.last_error} (${attempts})` : attempts;
}

function perSecond(name, field, value, now, list) {
  const previous = state.previous;
  if (!previous) return '—';
  const before = (previous.stats[list] || []).find((item) => item.name === name);
  const seconds = (now - previous.at) / 1000;
  if (!before || seconds <= 0) return '—';
  return ((value - before[field]) / seconds).toFixed(1);
}

function overviewTables(stats, now) {
  const connectors = stats.connectors.slice();
  connectors.sort((a, b) => (SEVERITY[a.state] - SEVERITY[b.state]) || (b.dlq_size - a.dlq_size) || a.name.localeCompare(b.name));
  const connectorRows = connectors.map((connector) => el('tr', { 'data-connector': connector.name },
    el('td', {}, el('a', { href: `#/dlq/${encodeURIComponent(connector.name)}`, text: connector.name })),
    el('td', { text: connector.kind }),
    el('td', {}, el('span', { class: `state state-${connector.state}`, 'data-state': connector.state, text: connector.state })),
    el('td', { class: 'num', text: connector.queue_depth }),
    el('td', { class: 'num', text: age(connector.oldest_queued_age_secs) }),
    el('td', { class: connector.dlq_size > 0 ? 'num state-bad' : 'num', text: connector.dlq_size }),
    el('td', { class: 'num', text: perSecond(connector.name, 'delivered', connector.delivered, now, 'connectors') }),
    el('td', { class: 'num', text: connector.delivered }),
    el('td', { class: 'num', text: connector.failed }),
    el('td', { class: 'last-error', title: connector.last_error || null, text: lastError(connector) }),
    el('td', {}, can('operator') ? el('button', {
      type: 'button', 'data-action': connector.paused ? 'resume' : 'pause',
      onclick: async (event) => {
        event.target.disabled = true;
        try { await api('POST', `/connectors/${encodeURIComponent(connector.name)}/${connector.paused ? 'resume' : 'pause'}`); } catch (error) { alert(error.message); }
        stopPolling();
        renderOverview();
      },
      text: connector.paused ? 'Resume' : 'Pause',
    }) : null)));
  const listeners = stats.listeners.map((listener) => el('tr', {},
    el('td', { text: listener.name }),
    el('td', { class: 'num', text: listener.connections_active }),
    el('td', { class: 'num', text: perSecond(listener.name, 'received', listener.received, now, 'listeners') }),
    el('td', { class: 'num', text: listener.received }),
    el('td', { class: 'num', text: listener.rejected + listener.errors }),
    el('td', { class: 'num', text: listener.connections_refused + listener.connections_denied + listener.tls_handshake_failures })));
  const orphaned = (stats.orphaned_connectors || []).map((orphan) => el('tr', {},
    el('td', { text: orphan.name }), el('td', { class: 'num', text: orphan.queue_depth }), el('td', { class: 'num', text: orphan.dlq_size })));
  return [
    el('h2', { text: 'Connectors' }),
    el('table', { id: 'connectors' },
      el('thead', {}, el('tr', {}, ...['Connector', 'Type', 'State', 'Queued', 'Oldest', 'Dead letters', 'Delivered/s', 'Delivered', 'Failed', 'Last error', ''].map((title, index) => el('th', { scope: 'col', class: index >= 3 && index <= 8 ? 'num' : null, text: title })))),
      el('tbody', {}, connectorRows)),
    el('h2', { text: 'Listeners' }),
    el('table', { id: 'listeners' },
      el('thead', {}, el('tr', {}, ...['Listener', 'Connections', 'Messages/s', 'Received', 'Not AA', 'Refused connections'].map((title, index) => el('th', { scope: 'col', class: index ? 'num' : null, text: title })))),
      el('tbody', {}, listeners)),
    orphaned.length ? el('h2', { text: 'Connectors no longer configured' }) : null,
    orphaned.length ? el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'Connector' }), el('th', { class: 'num', text: 'Queued' }), el('th', { class: 'num', text: 'Dead letters' }))), el('tbody', {}, orphaned)) : null,
    el('p', { class: 'muted', text: `Up ${age(stats.uptime_secs)}; ${stats.store.messages} ${stats.store.messages === 1 ? 'message' : 'messages'} stored. Refreshes every 2 s.` }),
  ];
}

// ---------------------------------------------------------------------------------------
// Messages

const SEARCH_FIELDS = [
  ['from', 'Received from', 'text', '1h or 2026-12-06T08:00:00Z'],
  ['to', 'Received before', 'text', ''],
  ['type', 'Type (MSH-9.1)', 'text', 'ADT'],
  ['trigger', 'Trigger (MSH-9.2)', 'text', 'A08'],
  ['control_id', 'Control id (MSH-10)', 'text', ''],
  ['sender', 'Sender (MSH-3 or MSH-4)', 'text', ''],
  ['connector', 'Connector', 'text', ''],
];

// Patient fields: only for roles that may see patient data. Their values stay in the page
// and go in a POST body, never in a URL.
const PATIENT_FIELDS = [
  ['patient_id', 'Patient identifier (PID-3)', 'text', ''],
  ['family_name', 'Family name (PID-5.1)', 'text', ''],
];

function renderMessages() {
  const inputs = {};
  const fields = (state.session.phi ? PATIENT_FIELDS : []).concat(SEARCH_FIELDS).map(([name, label, type, placeholder]) => {
    const patient = PATIENT_FIELDS.some(([field]) => field === name);
    inputs[name] = el('input', { id: `search-${name}`, name: patient ? null : name, type, autocomplete: patient ? 'off' : null, placeholder: placeholder || null, value: (state.search || {})[name] || null });
    return el('label', { for: `search-${name}` }, label, inputs[name]);
  });
  inputs.disposition = el('select', { id: 'search-disposition', name: 'disposition' }, ['', 'ROUTED', 'UNROUTED', 'REJECTED', 'ERROR'].map((value) => el('option', { value, text: value || 'any' })));
  inputs.status = el('select', { id: 'search-status', name: 'status' }, ['', 'QUEUED', 'FILTERED', 'DELIVERED', 'DEAD_LETTERED', 'PURGED'].map((value) => el('option', { value, text: value || 'any' })));
  for (const name of ['disposition', 'status']) if ((state.search || {})[name]) inputs[name].value = state.search[name];
  const results = el('div', { id: 'results' });
  const form = el('form', { class: 'search', role: 'search', method: 'post', action: '#', onsubmit: (event) => {
    event.preventDefault();
    state.search = Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value]));
    search(results, undefined);
  } },
  fields,
  el('label', { for: 'search-disposition' }, 'Disposition', inputs.disposition),
  el('label', { for: 'search-status' }, 'Status at connector', inputs.status),
  el('div', { class: 'actions' }, el('button', { id: 'search', class: 'primary', type: 'submit', text: 'Search' })));
  show(el('h1', { text: 'Messages' }), form, results);
  search(results, undefined);
}

async function search(results, before) {
  const params = { ...(state.search || {}), limit: 50, before };
  const current = state.page;
  try {
    const byPatient = ['patient_id', 'family_name'].some((name) => (params[name] || '').trim() !== '');
    let page;
    if (byPatient) {
      const body = {};
      for (const [key, value] of Object.entries(params)) {
        if (value !== undefined && value !== null && String(value).trim() !== '') body[key] = typeof value === 'number' ? value : String(value).trim();
      }
      page = await api('POST', '/messages/search', body);
    } else {
      delete params.patient_id;
      delete params.family_name;
      page = await api('GET', '/messages' + query(params));
    }
    if (current !== state.page) return;
    for (const message of page.messages) state.rows.set(String(message.id), message);
    const rows = page.messages.map((message) => el('tr', {},
      el('td', {}, el('a', { href: `#/messages/${message.id}`, text: message.id })),
      el('td', { text: message.received_at }),
      el('td', { text: message.message_type }),
      el('td', { text: message.control_id }),
      el('td', { text: `${message.sending_app} / ${message.sending_facility}` }),
      el('td', { text: message.listener }),
      el('td', { text: message.disposition }),
      el('td', { text: message.connectors.map((c) => `${c.connector}: ${c.status}`).join(', ') })));
    const table = el('table', { id: 'message-list' },
      el('thead', {}, el('tr', {}, ...['Id', 'Received', 'Type', 'Control id', 'Sender', 'Listener', 'Disposition', 'Connectors'].map((title) => el('th', { scope: 'col', text: title })))),
      el('tbody', {}, rows));
    const more = page.next_before ? el('button', { type: 'button', id: 'more', text: 'Older messages', onclick: () => search(results, page.next_before) }) : null;
    results.replaceChildren(
      rows.length ? table : el('p', { class: 'muted', text: 'No message matches.' }),
      el('div', { class: 'toolbar' }, more, el('span', { class: 'muted', text: `${page.scanned} records read.` })));
  } catch (error) {
    const shown = failure(error);
    if (shown) results.replaceChildren(shown);
  }
}

async function renderMessage(id) {
  show(el('h1', { text: `Message ${id}` }), el('p', { class: 'muted', text: 'Loading…' }));
  if (!state.session.phi) {
    const summary = state.rows.get(String(id));
    show(el('h1', { text: `Message ${id}` }),
      el('p', { class: 'notice', text: 'Message bodies and patient fields need the operator role.' }),
      summary ? facts(summary) : null,
      summary ? connectorTable(summary.connectors) : null);
    return;
  }
  const current = state.page;
  try {
    const message = await api('GET', `/messages/${encodeURIComponent(id)}`);
    if (current !== state.page) return;
    const raw = el('pre', { class: 'raw', id: 'raw', text: message.body.replace(/\r\n?/g, '\n') });
    const copied = el('span', { class: 'muted', role: 'status' });
    show(el('h1', { text: `Message ${id}: ${message.message_type} ${message.control_id}` }),
      facts(message),
      el('h2', { text: 'Connectors' }), connectorTable(message.connectors),
      can('operator') ? reprocessForm(message) : null,
      message.dicom ? dicomFacts(message.dicom) : null,
      el('h2', { text: message.dicom ? 'Header view (built from the object; the object is stored as received)' : 'Message' }), tree(message.body),
      el('h2', { text: message.dicom ? 'Header view, as text' : 'As received' }),
      el('div', { class: 'toolbar' }, el('button', { type: 'button', id: 'copy', text: 'Copy', onclick: async () => {
        try { await navigator.clipboard.writeText(message.body); copied.textContent = 'Copied.'; } catch (_) { copied.textContent = 'Select the text and copy it.'; }
      } }), copied),
      raw,
      el('h2', { text: 'ACK sent' }),
      message.ack
        ? el('pre', { class: 'raw', id: 'ack', text: message.ack.replace(/\r\n?/g, '\n') })
        : el('p', { class: 'muted', text: `${message.ack_code}: not kept (only accepted messages keep their ACK, to answer retransmissions).` }),
      ...message.copies.map((copy) => el('section', {},
        el('h2', { text: `What ${copy.connector} delivers (entry ${copy.entry})` }),
        copy.body === null || copy.body === undefined
          ? el('p', { class: 'error', text: copy.transform_failure || 'no copy' })
          : el('pre', { class: 'raw', text: copy.body.replace(/\r\n?/g, '\n') }))));
  } catch (error) {
    const shown = failure(error);
    if (shown && current === state.page) show(el('h1', { text: `Message ${id}` }), shown);
  }
}

// Queue a stored message again for a connector (through its current transform): a new
// queue entry, so outputs take it as a new delivery.
function reprocessForm(message) {
  const select = el('select', { id: 'reprocess-to', name: 'to' });
  const refused = el('input', { type: 'checkbox', id: 'reprocess-refused', name: 'include_rejected' });
  const outcome = el('p', { role: 'status', class: 'muted', id: 'reprocess-outcome' });
  const current = state.page;
  api('GET', '/stats').then((stats) => {
    if (current !== state.page) return;
    select.replaceChildren(...stats.connectors.map((c) => el('option', { value: c.name, text: c.name })));
  }).catch((error) => { outcome.textContent = error.message; });
  const refusedMessage = message.disposition === 'REJECTED' || message.disposition === 'ERROR';
  const form = el('form', { class: 'search', id: 'reprocess', onsubmit: async (event) => {
    event.preventDefault();
    if (!select.value) return;
    if (!confirm(`Queue message ${message.id} again for ${select.value}? It is delivered again, as a new delivery.`)) return;
    try {
      const result = await api('POST', '/messages/reprocess', { ids: [message.id], to: select.value, include_rejected: refused.checked });
      outcome.className = 'muted';
      if (result.queued.length) outcome.textContent = `Queued for ${select.value} (entry ${result.queued[0].entry}).`;
      else if (result.dead_lettered.length) outcome.textContent = `Queued, but the transform failed: ${result.dead_lettered[0].reason}`;
      else if (result.refused.length) outcome.textContent = 'The message was refused at intake: tick "also if refused" to send it anyway.';
      else outcome.textContent = 'The message is no longer stored.';
    } catch (error) {
      outcome.className = 'error';
      outcome.textContent = error.message;
    }
  } },
  el('label', { for: 'reprocess-to' }, 'Connector', select),
  refusedMessage ? el('label', { for: 'reprocess-refused', class: 'check' }, refused, 'also if refused') : null,
  el('div', { class: 'actions' }, el('button', { type: 'submit', id: 'reprocess-button', text: 'Reprocess…' })));
  return el('section', {}, el('h2', { text: 'Reprocess' }), form, outcome);
}

function facts(message) {
  const pairs = [
    ['Received', message.received_at], ['From', `${message.peer} on ${message.listener}`],
    ['Sender', `${message.sending_app} / ${message.sending_facility}`], ['Receiver', `${message.receiving_app} / ${message.receiving_facility}`],
    ['Disposition', message.disposition], ['ACK sent', message.ack_code + (message.reason ? ` (${message.reason})` : '')],
    ['Size', `${message.body_len} bytes`], ['Configuration', message.config || '—'],
  ];
  return el('dl', { class: 'facts' }, pairs.map(([name, value]) => [el('dt', { text: name }), el('dd', { text: value })]));
}

function dicomFacts(dicom) {
  const pairs = [
    ['Modality', dicom.modality], ['SOP class', dicom.sop_class_uid], ['SOP instance', dicom.sop_instance_uid],
    ['Study', dicom.study_uid], ['Series', dicom.series_uid], ['Accession', dicom.accession],
    ['Patient ID', dicom.patient_id], ['Transfer syntax', dicom.transfer_syntax], ['Stored', `${dicom.bytes} bytes`],
  ];
  return el('section', { id: 'dicom' }, el('h2', { text: 'DICOM object' }),
    el('dl', { class: 'facts' }, pairs.map(([name, value]) => [el('dt', { text: name }), el('dd', { text: value || '—' })])));
}

function connectorTable(connectors) {
  return el('table', { id: 'connector-states' },
    el('thead', {}, el('tr', {}, ...['Connector', 'Status', 'Since', 'Attempts', 'Last error', 'Next attempt'].map((title) => el('th', { scope: 'col', text: title })))),
    el('tbody', {}, connectors.map((c) => el('tr', {},
      el('td', { text: c.connector }), el('td', { text: c.status }), el('td', { text: c.at || '—' }),
      el('td', { class: 'num', text: c.attempts }), el('td', { text: c.last_error || '' }), el('td', { text: c.next_attempt || '' })))));
}

// ---------------------------------------------------------------------------------------
// The message as a tree: segments, fields with their names, repetitions, components,
// subcomponents; escape sequences decoded.

const NAMES = {
  MSH: ['Field Separator', 'Encoding Characters', 'Sending Application', 'Sending Facility', 'Receiving Application', 'Receiving Facility', 'Date/Time of Message', 'Security', 'Message Type', 'Message Control ID', 'Processing ID', 'Version ID', 'Sequence Number', 'Continuation Pointer', 'Accept Acknowledgment Type', 'Application Acknowledgment Type', 'Country Code', 'Character Set', 'Principal Language of Message', 'Alternate Character Set Handling Scheme', 'Message Profile Identifier'],
  EVN: ['Event Type Code', 'Recorded Date/Time', 'Date/Time Planned Event', 'Event Reason Code', 'Operator ID', 'Event Occurred', 'Event Facility'],
  PID: ['Set ID - PID', 'Patient ID', 'Patient Identifier List', 'Alternate Patient ID - PID', 'Patient Name', 'Mother\'s Maiden Name', 'Date/Time of Birth', 'Administrative Sex', 'Patient Alias', 'Race', 'Patient Address', 'County Code', 'Phone Number - Home', 'Phone Number - Business', 'Primary Language', 'Marital Status', 'Religion', 'Patient Account Number', 'SSN Number - Patient', 'Driver\'s License Number - Patient', 'Mother\'s Identifier', 'Ethnic Group', 'Birth Place', 'Multiple Birth Indicator', 'Birth Order', 'Citizenship', 'Veterans Military Status', 'Nationality', 'Patient Death Date and Time', 'Patient Death Indicator', 'Identity Unknown Indicator', 'Identity Reliability Code', 'Last Update Date/Time', 'Last Update Facility', 'Species Code', 'Breed Code', 'Strain', 'Production Class Code', 'Tribal Citizenship'],
  PV1: ['Set ID - PV1', 'Patient Class', 'Assigned Patient Location', 'Admission Type', 'Preadmit Number', 'Prior Patient Location', 'Attending Doctor', 'Referring Doctor', 'Consulting Doctor', 'Hospital Service', 'Temporary Location', 'Preadmit Test Indicator', 'Re-admission Indicator', 'Admit Source', 'Ambulatory Status', 'VIP Indicator', 'Admitting Doctor', 'Patient Type', 'Visit Number', 'Financial Class', 'Charge Price Indicator', 'Courtesy Code', 'Credit Rating', 'Contract Code', 'Contract Effective Date', 'Contract Amount', 'Contract Period', 'Interest Code', 'Transfer to Bad Debt Code', 'Transfer to Bad Debt Date', 'Bad Debt Agency Code', 'Bad Debt Transfer Amount', 'Bad Debt Recovery Amount', 'Delete Account Indicator', 'Delete Account Date', 'Discharge Disposition', 'Discharged to Location', 'Diet Type', 'Servicing Facility', 'Bed Status', 'Account Status', 'Pending Location', 'Prior Temporary Location', 'Admit Date/Time', 'Discharge Date/Time', 'Current Patient Balance', 'Total Charges', 'Total Adjustments', 'Total Payments', 'Alternate Visit ID', 'Visit Indicator', 'Other Healthcare Provider'],
  ORC: ['Order Control', 'Placer Order Number', 'Filler Order Number', 'Placer Group Number', 'Order Status', 'Response Flag', 'Quantity/Timing', 'Parent', 'Date/Time of Transaction', 'Entered By', 'Verified By', 'Ordering Provider', 'Enterer\'s Location', 'Call Back Phone Number', 'Order Effective Date/Time', 'Order Control Code Reason', 'Entering Organization', 'Entering Device', 'Action By', 'Advanced Beneficiary Notice Code', 'Ordering Facility Name', 'Ordering Facility Address', 'Ordering Facility Phone Number', 'Ordering Provider Address', 'Order Status Modifier', 'Advanced Beneficiary Notice Override Reason', 'Filler\'s Expected Availability Date/Time', 'Confidentiality Code', 'Order Type', 'Enterer Authorization Mode', 'Parent Universal Service Identifier'],
  OBR: ['Set ID - OBR', 'Placer Order Number', 'Filler Order Number', 'Universal Service Identifier', 'Priority - OBR', 'Requested Date/Time', 'Observation Date/Time', 'Observation End Date/Time', 'Collection Volume', 'Collector Identifier', 'Specimen Action Code', 'Danger Code', 'Relevant Clinical Information', 'Specimen Received Date/Time', 'Specimen Source', 'Ordering Provider', 'Order Callback Phone Number', 'Placer Field 1', 'Placer Field 2', 'Filler Field 1', 'Filler Field 2', 'Results Rpt/Status Chng - Date/Time', 'Charge to Practice', 'Diagnostic Serv Sect ID', 'Result Status', 'Parent Result', 'Quantity/Timing', 'Result Copies To', 'Parent', 'Transportation Mode', 'Reason for Study', 'Principal Result Interpreter', 'Assistant Result Interpreter', 'Technician', 'Transcriptionist', 'Scheduled Date/Time', 'Number of Sample Containers', 'Transport Logistics of Collected Sample', 'Collector\'s Comment', 'Transport Arrangement Responsibility', 'Transport Arranged', 'Escort Required', 'Planned Patient Transport Comment', 'Procedure Code', 'Procedure Code Modifier', 'Placer Supplemental Service Information', 'Filler Supplemental Service Information', 'Medically Necessary Duplicate Procedure Reason', 'Result Handling', 'Parent Universal Service Identifier'],
  OBX: ['Set ID - OBX', 'Value Type', 'Observation Identifier', 'Observation Sub-ID', 'Observation Value', 'Units', 'References Range', 'Abnormal Flags', 'Probability', 'Nature of Abnormal Test', 'Observation Result Status', 'Effective Date of Reference Range', 'User Defined Access Checks', 'Date/Time of the Observation', 'Producer\'s ID', 'Responsible Observer', 'Observation Method', 'Equipment Instance Identifier', 'Date/Time of the Analysis', 'Observation Site', 'Observation Instance Identifier', 'Mood Code', 'Performing Organization Name', 'Performing Organization Address', 'Performing Organization Medical Director'],
  NTE: ['Set ID - NTE', 'Source of Comment', 'Comment', 'Comment Type'],
  IN1: ['Set ID - IN1', 'Insurance Plan ID', 'Insurance Company ID', 'Insurance Company Name', 'Insurance Company Address', 'Insurance Co Contact Person', 'Insurance Co Phone Number', 'Group Number', 'Group Name', 'Insured\'s Group Emp ID', 'Insured\'s Group Emp Name', 'Plan Effective Date', 'Plan Expiration Date', 'Authorization Information', 'Plan Type', 'Name of Insured', 'Insured\'s Relationship to Patient', 'Insured\'s Date of Birth', 'Insured\'s Address', 'Assignment of Benefits', 'Coordination of Benefits', 'Coord of Ben. Priority', 'Notice of Admission Flag', 'Notice of Admission Date', 'Report of Eligibility Flag', 'Report of Eligibility Date', 'Release Information Code', 'Pre-Admit Cert (PAC)', 'Verification Date/Time', 'Verification By', 'Type of Agreement Code', 'Billing Status', 'Lifetime Reserve Days', 'Delay Before L.R. Day', 'Company Plan Code', 'Policy Number', 'Policy Deductible', 'Policy Limit - Amount', 'Policy Limit - Days', 'Room Rate - Semi-Private', 'Room Rate - Private', 'Insured\'s Employment Status', 'Insured\'s Administrative Sex', 'Insured\'s Employer\'s Address', 'Verification Status', 'Prior Insurance Plan ID', 'Coverage Type', 'Handicap', 'Insured\'s ID Number', 'Signature Code', 'Signature Code Date', 'Insured\'s Birth Place', 'VIP Indicator'],
  RXA: ['Give Sub-ID Counter', 'Administration Sub-ID Counter', 'Date/Time Start of Administration', 'Date/Time End of Administration', 'Administered Code', 'Administered Amount', 'Administered Units', 'Administered Dosage Form', 'Administration Notes', 'Administering Provider', 'Administered-at Location', 'Administered Per (Time Unit)', 'Administered Strength', 'Administered Strength Units', 'Substance Lot Number', 'Substance Expiration Date', 'Substance Manufacturer Name', 'Substance/Treatment Refusal Reason', 'Indication', 'Completion Status', 'Action Code - RXA', 'System Entry Date/Time', 'Administered Drug Strength Volume', 'Administered Drug Strength Volume Units', 'Administered Barcode Identifier', 'Pharmacy Order Type'],
};

/// The delimiters of a message (MSH-1 and MSH-2), with the standard ones by default.
const HEADERS = ['MSH', 'BHS', 'FHS'];

function delimiters(body) {
  const header = HEADERS.some((name) => body.startsWith(name)) && body.length > 3;
  const field = header ? body[3] : '|';
  const encoding = header ? body.slice(4).split(field)[0] : '^~\\&';
  return { field, component: encoding[0] || '^', repetition: encoding[1] || '~', escape: encoding[2] || '\\', subcomponent: encoding[3] || '&' };
}

/// Escape sequences decoded (\F\ \S\ \T\ \R\ \E\ \X..\ \.br\); unknown ones kept as written.
function unescape(text, d) {
  if (!text.includes(d.escape)) return text;
  let out = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] !== d.escape) { out += text[i]; continue; }
    const end = text.indexOf(d.escape, i + 1);
    if (end < 0) { out += text.slice(i); break; }
    const code = text.slice(i + 1, end);
    const known = { F: d.field, S: d.component, T: d.subcomponent, R: d.repetition, E: d.escape, '.br': '\n' };
    if (Object.hasOwn(known, code)) out += known[code];
    else if (/^X([0-9A-Fa-f]{2})+$/.test(code)) out += code.slice(1).match(/../g).map((hex) => String.fromCharCode(parseInt(hex, 16))).join('');
    else out += text.slice(i, end + 1);
    i = end;
  }
  return out;
}

function leaf(label, value, d) {
  return el('div', { class: 'field' }, el('span', { class: 'name', text: `${label}: ` }), el('span', { class: 'value', text: unescape(value, d) }));
}

function fieldNode(segment, number, raw, d) {
  const names = NAMES[segment] || [];
  const name = names[number - 1];
  const label = `${segment}-${number}${name ? ` ${name}` : ''}`;
  const isEncoding = HEADERS.includes(segment) && number <= 2;
  const repetitions = isEncoding ? [raw] : raw.split(d.repetition);
  const simple = isEncoding || (repetitions.length === 1 && !raw.includes(d.component) && !raw.includes(d.subcomponent));
  if (simple) return el('div', { class: 'field', 'data-field': `${segment}-${number}` }, el('span', { class: 'name', text: `${label}: ` }), el('span', { class: 'value', text: isEncoding ? raw : unescape(raw, d) }));
  const children = repetitions.map((repetition, index) => {
    const components = repetition.split(d.component).map((component, c) => {
      const subs = component.split(d.subcomponent);
      if (subs.length === 1) return leaf(`${segment}-${number}.${c + 1}`, component, d);
      return el('details', { open: true }, el('summary', { text: `${segment}-${number}.${c + 1}` }), subs.map((sub, s) => leaf(`${segment}-${number}.${c + 1}.${s + 1}`, sub, d)));
    });
    return repetitions.length > 1 ? el('details', { open: true }, el('summary', { text: `repetition ${index + 1}` }), components) : components;
  });
  return el('details', { open: true, 'data-field': `${segment}-${number}` }, el('summary', {}, el('span', { class: 'name', text: label })), children);
}

function tree(body) {
  const d = delimiters(body);
  const segments = body.split(/\r\n|\r|\n/).filter((line) => line.length > 0);
  return el('div', { class: 'tree', id: 'tree' }, segments.map((line) => {
    const name = line.slice(0, 3);
    let fields = line.split(d.field).slice(1);
    if (HEADERS.includes(name)) fields = [d.field, ...fields];
    const nodes = fields.map((raw, index) => (raw === '' ? null : fieldNode(name, index + 1, raw, d)));
    return el('details', { open: true, 'data-segment': name }, el('summary', { text: name }), nodes);
  }));
}

// ---------------------------------------------------------------------------------------
// Dead letters

async function renderDlq(connector) {
  const holder = el('div', { id: 'dlq' }, el('p', { class: 'muted', text: 'Loading…' }));
  show(el('h1', { text: connector ? `Dead letters: ${connector}` : 'Dead letters' }), holder);
  const current = state.page;
  try {
    const page = await api('GET', '/dlq' + query({ connector, limit: 200 }));
    if (current !== state.page) return;
    if (!page.entries.length) { holder.replaceChildren(el('p', { class: 'muted', text: 'No dead letters.' })); return; }
    const groups = new Map();
    for (const entry of page.entries) {
      if (!groups.has(entry.connector)) groups.set(entry.connector, []);
      groups.get(entry.connector).push(entry);
    }
    holder.replaceChildren(...[...groups].map(([name, entries]) => dlqSection(name, entries)));
  } catch (error) {
    const shown = failure(error);
    if (shown) holder.replaceChildren(shown);
  }
}

function dlqSection(name, entries) {
  const boxes = [];
  const outcome = el('p', { role: 'status', class: 'muted' });
  const act = async (action, body) => {
    try {
      const result = await api('POST', `/dlq/${encodeURIComponent(name)}/${action}`, body);
      const done = action === 'replay' ? result.replayed.length : result.purged.length;
      outcome.textContent = `${action === 'replay' ? 'Replayed' : 'Purged'} ${done}; ${result.remaining} left.`;
      const current = state.page;
      setTimeout(() => { if (current === state.page) route(); }, 600);
    } catch (error) {
      outcome.textContent = error.message;
      outcome.className = 'error';
    }
  };
  const selected = () => boxes.filter((box) => box.checked).map((box) => Number(box.value));
  const rows = entries.map((entry) => {
    const box = can('operator') ? el('input', { type: 'checkbox', value: entry.seq, 'aria-label': `Select entry ${entry.seq}` }) : null;
    if (box) boxes.push(box);
    return el('tr', { 'data-seq': entry.seq },
      el('td', {}, box),
      el('td', {}, el('a', { href: `#/messages/${entry.message_id}`, text: entry.message_id })),
      el('td', { text: entry.message_type }), el('td', { text: entry.control_id }),
      el('td', { text: entry.failed_at }), el('td', { class: 'num', text: entry.attempts }),
      el('td', { text: entry.reason }),
      el('td', {}, can('operator') ? el('button', { type: 'button', 'data-action': 'replay', text: 'Replay', onclick: () => act('replay', { seqs: [entry.seq] }) }) : null));
  });
  const toolbar = el('div', { class: 'toolbar' },
    can('operator') ? el('button', { type: 'button', 'data-action': 'replay-selected', text: 'Replay selected', onclick: () => act('replay', { seqs: selected() }) }) : null,
    can('operator') ? el('button', { type: 'button', 'data-action': 'replay-all', text: 'Replay all', onclick: () => act('replay', { all: true }) }) : null,
    can('admin') ? el('button', { type: 'button', class: 'danger', 'data-action': 'purge-selected', text: 'Purge selected…', onclick: () => {
      const seqs = selected();
      if (seqs.length && confirm(`Purge ${seqs.length} dead letter(s) of ${name}? They will not be delivered.`)) act('purge', { seqs });
    } }) : null,
    can('admin') ? el('button', { type: 'button', class: 'danger', 'data-action': 'purge-all', text: 'Purge all…', onclick: () => {
      if (confirm(`Purge every dead letter of ${name}? They will not be delivered.`)) act('purge', { all: true });
    } }) : null);
  return el('section', { 'data-connector': name },
    el('h2', { text: name }), toolbar, outcome,
    el('table', {},
      el('thead', {}, el('tr', {}, ...['', 'Message', 'Type', 'Control id', 'Failed at', 'Attempts', 'Reason', ''].map((title) => el('th', { scope: 'col', text: title })))),
      el('tbody', {}, rows)));
}

// ---------------------------------------------------------------------------------------
// Audit trail: newest first, by kind; the chain checked on request (it reads all of it).

function renderAudit() {
  const kind = el('select', { id: 'audit-kind', name: 'kind' },
    el('option', { value: '', text: 'every record' }), el('option', { value: 'admin', text: 'admin actions' }), el('option', { value: 'received', text: 'received messages' }));
  const verdict = el('p', { id: 'audit-verdict', role: 'status', class: 'muted' });
  const list = el('div', { id: 'audit-list' });
  const verify = el('button', { type: 'button', id: 'audit-verify', text: 'Verify the chain', onclick: async () => {
    verify.disabled = true;
    verdict.textContent = 'Checking every record…';
    verdict.className = 'muted';
    const current = state.page;
    try {
      const report = await api('GET', '/audit/verify');
      if (current !== state.page) return;
      verdict.textContent = report.intact
        ? `Intact: ${report.records} records checked.`
        : `NOT intact: ${report.problem_count} problem(s). ${report.problems.slice(0, 5).join(' ')}`;
      verdict.className = report.intact ? 'state-ok' : 'error';
    } catch (error) {
      verdict.textContent = error.message;
      verdict.className = 'error';
    }
    verify.disabled = false;
  } });
  kind.addEventListener('change', () => auditPage(list, kind.value, undefined, false));
  show(el('h1', { text: 'Audit trail' }),
    el('div', { class: 'toolbar' }, el('label', { for: 'audit-kind' }, 'Show ', kind), verify), verdict, list);
  auditPage(list, '', undefined, false);
}

async function auditPage(list, kind, before, append) {
  const current = state.page;
  try {
    const page = await api('GET', '/audit' + query({ order: 'newest', limit: 100, kind, before }));
    if (current !== state.page) return;
    const rows = page.records.map((record) => el('tr', { 'data-seq': record.seq },
      el('td', { class: 'num', text: record.seq }),
      el('td', { text: record.at }),
      el('td', { text: record.kind }),
      el('td', { text: record.kind === 'admin' ? record.token_id : `${record.peer} on ${record.listener}${record.tls_identity ? ` (${record.tls_identity})` : ''}` }),
      el('td', { text: record.kind === 'admin'
        ? `${record.action} ${record.target} ${record.outcome}`.trim()
        : `${record.message_type} ${record.control_id} → ${record.ack_code}${record.duplicate ? ' (retransmit)' : ''}` })));
    let body = list.querySelector('tbody');
    if (!append || !body) {
      body = el('tbody', {});
      list.replaceChildren(el('table', { id: 'audit' },
        el('thead', {}, el('tr', {}, ...['Seq', 'When', 'Kind', 'Who / from', 'What'].map((title) => el('th', { scope: 'col', text: title })))),
        body));
    }
    body.append(...rows);
    const old = list.querySelector('#audit-older');
    if (old) old.remove();
    if (page.next_before !== undefined && page.next_before !== null) {
      list.append(el('button', { type: 'button', id: 'audit-older', text: 'Older records', onclick: () => auditPage(list, kind, page.next_before, true) }));
    }
  } catch (error) {
    const shown = failure(error);
    if (shown) list.replaceChildren(shown);
  }
}

// ---------------------------------------------------------------------------------------
// Start

document.addEventListener('DOMContentLoaded', async () => {
  document.getElementById('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  document.addEventListener('keydown', (event) => {
    // "/" jumps to the message search, as in most consoles.
    if (event.key === '/' && state.session && !event.ctrlKey && !event.metaKey && !event.altKey
        && !['INPUT', 'SELECT', 'TEXTAREA'].includes(document.activeElement.tagName)) {
      event.preventDefault();
      if (!location.hash.startsWith('#/messages') || location.hash.split('/').length > 2) location.hash = '#/messages';
      setTimeout(() => { const first = document.getElementById('search-from'); if (first) first.focus(); }, 50);
    }
  });
  try {
    state.session = await call('GET', '/ui/session');
  } catch (_) {
    state.session = null;
  }
  route();
});
