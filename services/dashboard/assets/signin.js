// Sign-in inside GHL: ask the GHL page around this one for the user's context, hand it to the
// server (which opens it with the app's Shared Secret), then go to the dashboard. Outside GHL
// there is nobody to ask: the API token form is the way in.
(function () {
  var status = document.getElementById("ghl-status");
  if (window.parent === window) {
    status.textContent = "Not inside GHL: sign in with an API token.";
    var details = document.querySelector("details");
    if (details) details.open = true;
    return;
  }
  var answered = false;
  window.addEventListener("message", function (event) {
    var data = event.data || {};
    if (answered || data.message !== "REQUEST_USER_DATA_RESPONSE") return;
    answered = true;
    status.textContent = "Signing you in…";
    fetch("/app/sso", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ payload: data.payload })
    })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) throw new Error(body.error || "GHL's sign-in was refused");
          window.location.assign(body.redirect);
        });
      })
      .catch(function (error) {
        status.textContent = error.message;
        status.className = "error";
      });
  });
  window.parent.postMessage({ message: "REQUEST_USER_DATA" }, "*");
  setTimeout(function () {
    if (!answered) status.textContent = "GHL did not answer: sign in with an API token.";
  }, 5000);
})();
