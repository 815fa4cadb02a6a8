// The built-in dashboard: long-polls this server's GraphQL API, one request per refresh.
//
// - Payments come from the client-wide feed `payments(after: cursor)`: a poller that
//   follows `endCursor` sees every payment exactly once, however many instances commit
//   them, so the live list and the counts miss nothing.
// - The chart follows `ledgerEntries(accountId:, after:)` for the chosen account.
// - Balances are the server's cached reads (Consistency CACHED).
// - Each refresh is a GET of the built-in document by its id (assets/dashboard.graphql,
//   trusted under every GRAPHQL_DOCUMENTS policy) with the ETag of the last answer in
//   If-None-Match and `Prefer: wait=25`: the server holds it until this client's data
//   changes (answered within a second, on any instance) or 25 s pass (304). An idle
//   dashboard sends about 2-3 requests a minute. After a change it waits at least
//   CHANGED_GAP_MS before the next (so a busy ledger costs at most 1 answer a second);
//   while the tab is hidden, that gap doubles up to 60 s. A server that does not hold
//   the request (no Preference-Applied, e.g. while shutting down) is asked every 2 s.
//   Errors back off; RETRY_LATER means "the server is busy": wait, retry.
(function () {
  "use strict";

  var KEY_STORAGE = "payments-ledger.dashboard.api-key";
  var VISIBLE_INTERVAL_MS = 2000;
  var HIDDEN_INTERVAL_MAX_MS = 60000;
  var ERROR_INTERVAL_MAX_MS = 30000;
  var PAYMENT_ROWS_SHOWN = 50;
  var CHART_POINTS_KEPT = 500;
  var RATE_WINDOW_MS = 10000;

  // The SHA-256 of assets/dashboard.graphql (a test keeps them in step).
  var DOCUMENT_ID = "sha256:45c27b5b78308311705e00e072e1774bdad00928a9bb6d733d423248043804dd";
  var WAIT_SECONDS = 25;
  var CHANGED_GAP_MS = 1000;

  var state = {
    key: null,
    timer: null,
    paymentCursor: null,
    paymentsStarted: false,
    seen: 0,
    declines: 0,
    ticks: [], // { at, payments, declines }
    perCurrency: {}, // code -> { volume, payments, declines }
    chartAccount: null,
    chartCursor: null,
    chartStarted: false,
    chartPoints: [],
    failures: 0,
    hiddenInterval: CHANGED_GAP_MS,
    accounts: [],
    generation: 0,
    // The last answer's ETag and the URL it answered: sent back to wait for a change.
    etag: null,
    etagUrl: null,
    inflight: null,
    requests: 0,
  };

  function $(id) {
    return document.getElementById(id);
  }

  function setStatus(text, isError) {
    var status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  // Decimal strings ("12.30") added exactly, as BigInt minor units.
  function toMinor(text, scale) {
    var negative = text.charAt(0) === "-";
    var parts = (negative ? text.slice(1) : text).split(".");
    var fraction = (parts[1] || "").padEnd(scale, "0");
    var value = BigInt(parts[0] + fraction);
    return negative ? -value : value;
  }

  function scaleOf(text) {
    var dot = text.indexOf(".");
    return dot < 0 ? 0 : text.length - dot - 1;
  }

  function addDecimal(total, text) {
    // total: { minor: BigInt, scale: Number }
    var scale = Math.max(total.scale, scaleOf(text));
    var left = total.minor * BigInt(Math.pow(10, scale - total.scale));
    return { minor: left + toMinor(text, scale), scale: scale };
  }

  function formatDecimal(total) {
    var negative = total.minor < 0n;
    var digits = (negative ? -total.minor : total.minor).toString().padStart(total.scale + 1, "0");
    var whole = digits.slice(0, digits.length - total.scale);
    var fraction = digits.slice(digits.length - total.scale);
    return (negative ? "-" : "") + whole + (total.scale ? "." + fraction : "");
  }

  function cell(row, text, className) {
    var td = document.createElement("td");
    td.textContent = text == null ? "—" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function shortId(id) {
    return id.slice(0, 4) + "…" + id.slice(-6);
  }

  // An account as people know it: its external reference, else its id, shortened.
  function accountName(account) {
    return account.externalRef || shortId(account.id);
  }

  // One refresh. Resolves to { data } for a new answer, or { unchanged, waited } for
  // a 304 (waited: the server held it, as asked).
  async function graphql(variables) {
    var url = "/graphql?documentId=" + encodeURIComponent(DOCUMENT_ID) +
      "&variables=" + encodeURIComponent(JSON.stringify(variables));
    var headers = {
      accept: "application/graphql-response+json, application/json",
      authorization: "Bearer " + state.key,
    };
    if (state.etag !== null && state.etagUrl === url) {
      headers["if-none-match"] = state.etag;
      headers.prefer = "wait=" + WAIT_SECONDS;
    }
    var controller = new AbortController();
    state.inflight = controller;
    state.requests += 1;
    $("status").dataset.requests = String(state.requests);
    var response;
    try {
      response = await fetch(url, { method: "GET", headers: headers, cache: "no-store", signal: controller.signal });
    } finally {
      if (state.inflight === controller) state.inflight = null;
    }
    if (response.status === 304) {
      return { unchanged: true, waited: response.headers.has("preference-applied") };
    }
    var body;
    try {
      body = await response.json();
    } catch (error) {
      throw { code: "HTTP_" + response.status, message: "the server answered " + response.status };
    }
    if (body.errors && body.errors.length) {
      var first = body.errors[0];
      throw { code: (first.extensions && first.extensions.code) || "ERROR", message: first.message };
    }
    var etag = response.headers.get("etag");
    state.etag = etag;
    state.etagUrl = etag ? url : null;
    return { data: body.data };
  }

  function variablesForTick() {
    var variables = { withChart: state.chartAccount !== null };
    if (state.paymentsStarted) {
      variables.first = 100;
      variables.after = state.paymentCursor;
    } else {
      // The first refresh shows the latest payments, then follows the feed from there.
      variables.last = PAYMENT_ROWS_SHOWN;
    }
    if (state.chartAccount !== null) {
      variables.chartAccount = state.chartAccount;
      if (state.chartStarted) {
        variables.chartFirst = 100;
        variables.chartAfter = state.chartCursor;
      } else {
        variables.chartLast = 100;
      }
    }
    return variables;
  }

  async function tick() {
    state.timer = null;
    var generation = state.generation;
    var chartAccount = state.chartAccount;
    var more = false;
    try {
      var answer = await graphql(variablesForTick());
      if (generation !== state.generation) return;
      state.failures = 0;
      if (answer.unchanged) {
        setStatus("Live · up to date at " + new Date().toLocaleTimeString() + (document.hidden ? " · tab hidden" : ""));
        schedule(answer.waited ? 0 : VISIBLE_INTERVAL_MS);
        return;
      }
      var data = answer.data;
      renderAccounts(data.accounts);
      more = takePayments(data.payments) || more;
      if (data.chart && chartAccount === state.chartAccount) {
        more = takeChart(data.chart) || more;
      }
      renderTotals();
      renderRates();
      setStatus("Live · updated " + new Date().toLocaleTimeString() + (document.hidden ? " · tab hidden, polling slower" : ""));
    } catch (error) {
      // Aborted by a newer refresh (another chart account, the tab shown again).
      if (generation !== state.generation || (error && error.name === "AbortError")) return;
      if (error && (error.code === "UNAUTHENTICATED" || error.code === "HTTP_401")) {
        disconnect(error.message || "the server refused the key");
        return;
      }
      state.failures += 1;
      var wait = Math.min(ERROR_INTERVAL_MAX_MS, VISIBLE_INTERVAL_MS * Math.pow(2, state.failures));
      var reason = error && error.code === "RETRY_LATER" ? "server busy" : (error && error.message) || String(error);
      setStatus("Retrying in " + Math.round(wait / 1000) + " s: " + reason, true);
      schedule(wait);
      return;
    }
    // A backlog (more than one page behind) is read right away.
    schedule(more ? 0 : gapAfterChange());
  }

  function gapAfterChange() {
    if (!document.hidden) {
      state.hiddenInterval = CHANGED_GAP_MS;
      return CHANGED_GAP_MS;
    }
    state.hiddenInterval = Math.min(HIDDEN_INTERVAL_MAX_MS, state.hiddenInterval * 2);
    return state.hiddenInterval;
  }

  // The next refresh after `delay`; one waiting at the server is given up.
  function schedule(delay) {
    if (state.timer !== null) clearTimeout(state.timer);
    if (state.inflight !== null) {
      state.inflight.abort();
      state.inflight = null;
    }
    state.timer = setTimeout(tick, delay);
  }

  function renderAccounts(connection) {
    state.accounts = connection.nodes;
    var body = $("accounts").querySelector("tbody");
    body.textContent = "";
    connection.nodes.forEach(function (account) {
      var row = document.createElement("tr");
      row.className = "selectable" + (account.id === state.chartAccount ? " selected" : "");
      row.dataset.accountId = account.id;
      var name = cell(row, "");
      var code = document.createElement("code");
      code.textContent = accountName(account);
      code.title = account.id;
      name.appendChild(code);
      cell(row, account.balanceRule.toLowerCase().replace("_", " "));
      cell(row, account.balance.amount + " " + account.currency, "num");
      cell(row, account.balance.available == null ? "unbounded" : account.balance.available + " " + account.currency, "num");
      row.addEventListener("click", function () {
        chooseChartAccount(account.id);
      });
      body.appendChild(row);
    });
    $("accounts-more").textContent = connection.pageInfo.hasNextPage ? "Showing the first 100 accounts." : "";
  }

  function currencyTotals(code) {
    if (!state.perCurrency[code]) {
      state.perCurrency[code] = { volume: { minor: 0n, scale: 0 }, payments: 0, declines: 0 };
    }
    return state.perCurrency[code];
  }

  // Returns true when the feed has more to read right away.
  function takePayments(connection) {
    var fresh = connection.nodes;
    var declined = 0;
    fresh.forEach(function (payment) {
      var totals = currencyTotals(payment.currency);
      totals.payments += 1;
      if (payment.status === "DECLINED") {
        totals.declines += 1;
        declined += 1;
      } else {
        totals.volume = addDecimal(totals.volume, payment.amount);
      }
    });
    // The first page is history; rates count what arrives while watching.
    if (state.paymentsStarted) {
      state.ticks.push({ at: Date.now(), payments: fresh.length, declines: declined });
    }
    state.seen += fresh.length;
    state.declines += declined;
    if (connection.pageInfo.endCursor) state.paymentCursor = connection.pageInfo.endCursor;
    var animate = state.paymentsStarted;
    state.paymentsStarted = true;
    var body = $("payments").querySelector("tbody");
    fresh.forEach(function (payment) {
      var row = document.createElement("tr");
      row.dataset.paymentId = payment.id;
      if (animate) row.className = "fresh";
      cell(row, new Date(payment.createdAt).toLocaleTimeString());
      var id = cell(row, "");
      var code = document.createElement("code");
      code.textContent = shortId(payment.id);
      code.title = payment.id;
      id.appendChild(code);
      cell(row, accountName(payment.fromAccount) + " → " + accountName(payment.toAccount));
      cell(row, payment.amount + " " + payment.currency, "num");
      cell(row, payment.status === "DECLINED" ? "DECLINED · " + payment.declineReason : payment.status, payment.status);
      body.insertBefore(row, body.firstChild);
    });
    while (body.children.length > PAYMENT_ROWS_SHOWN) body.removeChild(body.lastChild);
    return connection.pageInfo.hasNextPage && fresh.length > 0;
  }

  function renderTotals() {
    var held = {};
    var accounts = {};
    state.accounts.forEach(function (account) {
      accounts[account.currency] = (accounts[account.currency] || 0) + 1;
      currencyTotals(account.currency);
      // System (UNBOUNDED) accounts bring money in; what customers hold is the rest.
      if (account.balanceRule !== "UNBOUNDED") {
        held[account.currency] = addDecimal(held[account.currency] || { minor: 0n, scale: 0 }, account.balance.amount);
      }
    });
    var body = $("totals").querySelector("tbody");
    body.textContent = "";
    Object.keys(state.perCurrency).sort().forEach(function (code) {
      var totals = state.perCurrency[code];
      var row = document.createElement("tr");
      row.dataset.currency = code;
      cell(row, code);
      cell(row, accounts[code] || 0, "num");
      cell(row, held[code] ? formatDecimal(held[code]) : "0", "num");
      cell(row, formatDecimal(totals.volume), "num");
      cell(row, totals.payments, "num");
      cell(row, totals.declines, "num");
      body.appendChild(row);
    });
  }

  function renderRates() {
    var now = Date.now();
    state.ticks = state.ticks.filter(function (entry) {
      return now - entry.at <= RATE_WINDOW_MS;
    });
    var payments = 0;
    var declines = 0;
    state.ticks.forEach(function (entry) {
      payments += entry.payments;
      declines += entry.declines;
    });
    $("rate").textContent = (payments / (RATE_WINDOW_MS / 1000)).toFixed(1);
    $("decline-rate").textContent = (declines / (RATE_WINDOW_MS / 1000)).toFixed(1);
    $("seen").textContent = String(state.seen);
    $("declines").textContent = String(state.declines);
  }

  function chooseChartAccount(id) {
    state.chartAccount = id;
    state.chartCursor = null;
    state.chartStarted = false;
    state.chartPoints = [];
    var account = state.accounts.find(function (each) {
      return each.id === id;
    });
    $("chart-account").textContent = account ? (account.externalRef || id) + " (" + account.currency + ")" : id;
    Array.prototype.forEach.call($("accounts").querySelectorAll("tr.selectable"), function (row) {
      row.classList.toggle("selected", row.dataset.accountId === id);
    });
    drawChart();
    schedule(0);
  }

  function takeChart(connection) {
    connection.nodes.forEach(function (entry) {
      state.chartPoints.push({ at: Date.parse(entry.createdAt), balance: Number(entry.balanceAfter) });
    });
    if (state.chartPoints.length > CHART_POINTS_KEPT) {
      state.chartPoints = state.chartPoints.slice(-CHART_POINTS_KEPT);
    }
    if (connection.pageInfo.endCursor) state.chartCursor = connection.pageInfo.endCursor;
    var more = state.chartStarted && connection.pageInfo.hasNextPage && connection.nodes.length > 0;
    state.chartStarted = true;
    drawChart();
    return more;
  }

  function drawChart() {
    var svg = $("chart");
    svg.textContent = "";
    var points = state.chartPoints;
    if (!points.length) {
      $("chart-range").textContent = state.chartAccount ? "No entries yet." : "";
      return;
    }
    var ns = "http://www.w3.org/2000/svg";
    var minAt = points[0].at;
    var maxAt = points[points.length - 1].at;
    var balances = points.map(function (point) { return point.balance; }).concat([0]);
    var low = Math.min.apply(null, balances);
    var high = Math.max.apply(null, balances);
    var spanAt = Math.max(1, maxAt - minAt);
    var spanBalance = Math.max(1e-9, high - low);
    var x = function (at) { return points.length === 1 ? 400 : ((at - minAt) / spanAt) * 790 + 5; };
    var y = function (balance) { return 210 - ((balance - low) / spanBalance) * 200; };
    var zero = document.createElementNS(ns, "line");
    zero.setAttribute("x1", "0");
    zero.setAttribute("x2", "800");
    zero.setAttribute("y1", String(y(0)));
    zero.setAttribute("y2", String(y(0)));
    svg.appendChild(zero);
    // A step line: a balance holds until the next entry changes it.
    var coordinates = [];
    points.forEach(function (point, index) {
      if (index > 0) coordinates.push(x(point.at) + "," + y(points[index - 1].balance));
      coordinates.push(x(point.at) + "," + y(point.balance));
    });
    var line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", coordinates.join(" "));
    svg.appendChild(line);
    $("chart-range").textContent =
      points.length + " entries · low " + low + " · high " + high + " · latest " + points[points.length - 1].balance;
  }

  function connect(key) {
    state.key = key;
    state.generation += 1;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("connect").hidden = true;
    $("board").hidden = false;
    $("disconnect").hidden = false;
    setStatus("Connecting…");
    schedule(0);
  }

  function disconnect(message) {
    state.generation += 1;
    if (state.timer !== null) clearTimeout(state.timer);
    state.timer = null;
    if (state.inflight !== null) state.inflight.abort();
    state.inflight = null;
    state.etag = null;
    state.etagUrl = null;
    state.key = null;
    sessionStorage.removeItem(KEY_STORAGE);
    $("connect").hidden = false;
    $("board").hidden = true;
    $("disconnect").hidden = true;
    $("connect-error").textContent = message || "";
    setStatus("Not connected", Boolean(message));
  }

  $("connect").addEventListener("submit", function (event) {
    event.preventDefault();
    var key = $("api-key").value.trim();
    if (!key) return;
    $("api-key").value = "";
    $("connect-error").textContent = "";
    connect(key);
  });
  $("disconnect").addEventListener("click", function () {
    disconnect("");
  });
  document.addEventListener("visibilitychange", function () {
    // Back in view: refresh now instead of waiting out a long hidden interval.
    if (!document.hidden && state.key !== null && state.failures === 0) {
      state.hiddenInterval = CHANGED_GAP_MS;
      schedule(0);
    }
  });

  var saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) connect(saved);
})();
