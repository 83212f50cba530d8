// Live account pages: the server sends what changed (server-sent events) and this script puts
// it on the page. Without it the pages still work; they only stop updating by themselves.
(function () {
  var root = document.querySelector("[data-events]");
  if (!root || !window.EventSource) return;
  var source = new EventSource(root.getAttribute("data-events"));
  // Leaving the page closes its stream, also when the browser keeps the page to come back to:
  // a browser opens at most six connections to a host, and streams of pages left behind would
  // hold them until the server ends them, so that a click (a form's POST) waited for minutes.
  window.addEventListener("pagehide", function () { source.close(); });
  // A page shown again from the back/forward cache is drawn afresh, with a new stream.
  window.addEventListener("pageshow", function (event) {
    if (event.persisted) window.location.reload();
  });

  function setStatus(element, tone, text) {
    if (!element) return;
    element.className = "status status-" + tone;
    element.textContent = text;
  }

  // The list: each row's status and reason, and the count against the limit.
  source.addEventListener("accounts", function (event) {
    var data = JSON.parse(event.data);
    var count = document.getElementById("account-count");
    if (count) count.textContent = data.summary;
    var shown = document.querySelectorAll("tr[data-account]");
    if (shown.length !== data.accounts.length) {
      // An account came or went: the page is drawn again with it.
      window.location.reload();
      return;
    }
    data.accounts.forEach(function (account) {
      var row = document.querySelector('tr[data-account="' + account.id + '"]');
      if (!row) { window.location.reload(); return; }
      setStatus(row.querySelector('[data-field="status"]'), account.tone, account.status_text);
      var reason = row.querySelector('[data-field="reason"]');
      if (reason) reason.textContent = account.reason;
    });
  });

  // One account: its status, and the code to scan or type while it links.
  source.addEventListener("account", function (event) {
    var data = JSON.parse(event.data);
    setStatus(document.getElementById("account-status"), data.tone, data.status_text);
    var reason = document.getElementById("account-reason");
    if (reason) reason.textContent = data.reason;
    var qr = document.getElementById("qr");
    if (qr && data.qr_svg) {
      qr.innerHTML = data.qr_svg; // drawn by the server from the code, not from user input
      qr.setAttribute("data-qr", data.qr);
    }
    var figure = document.getElementById("qr-figure");
    if (figure && data.qr_svg) figure.hidden = false;
    var pairing = document.getElementById("pairing");
    if (pairing && data.pairing_code) {
      document.getElementById("pairing-code").textContent = data.pairing_code;
      pairing.hidden = false;
      // A number linked by code shows no QR code until one comes.
      if (figure && !(qr && qr.querySelector("svg"))) figure.hidden = true;
    }
    var connected = document.getElementById("connected");
    var linking = document.getElementById("linking");
    if (connected) connected.hidden = data.status !== "connected";
    if (linking) linking.hidden = data.status === "connected";
    var relink = document.getElementById("relink");
    if (relink) relink.hidden = data.status === "connected" || data.status === "linking";
    if (data.status === "removed") source.close();
  });
})();
