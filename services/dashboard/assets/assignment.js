// The rules editor: checks the JSON as it is typed (the server runs SetRules' own check and
// names the bad field), writes the quick-setup form into it, and previews the rules over
// recorded history (Simulate) before they are saved. Without scripts the form still saves.
(function () {
  var page = document.getElementById("assignment");
  var editor = document.getElementById("rules_json");
  var status = document.getElementById("validation");
  var preview = document.getElementById("preview");
  if (!page || !editor) return;
  var location = page.dataset.location, account = page.dataset.account;

  function post(path, body) {
    return fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": page.dataset.csrf },
      body: JSON.stringify(Object.assign({ location: location, account: account }, body))
    });
  }

  function show(ok, message, field) {
    status.textContent = "";
    if (field) {
      var code = document.createElement("code");
      code.className = "field";
      code.textContent = field;
      status.appendChild(code);
      status.appendChild(document.createTextNode(" "));
    }
    status.appendChild(document.createTextNode(message));
    status.className = ok ? "ok" : "error";
    editor.setAttribute("aria-invalid", ok ? "false" : "true");
  }

  var timer = null, asked = 0;
  function validate() {
    var mine = ++asked;
    return post("/app/assignment/validate", { rules_json: editor.value })
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (mine !== asked) return;
        if (answer.ok) show(true, answer.summary);
        else show(false, answer.error || "not valid", answer.field);
      })
      .catch(function () { show(false, "could not check the rules: is the dashboard reachable?"); });
  }
  editor.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(validate, 300);
  });

  document.getElementById("simulate").addEventListener("click", function () {
    preview.innerHTML = "<p class=\"muted\">Replaying…</p>";
    post("/app/assignment/simulate", {
      rules_json: editor.value,
      days: parseInt(document.getElementById("days").value, 10)
    })
      .then(function (response) { return response.text(); })
      .then(function (html) { preview.innerHTML = html; })
      .catch(function () { preview.innerHTML = "<p class=\"error\">The preview is not available.</p>"; });
  });

  // Quick setup.
  var strategy = document.getElementById("q-strategy");
  function toggle() {
    document.querySelectorAll("#quick [data-for]").forEach(function (block) {
      block.hidden = block.dataset.for.split(" ").indexOf(strategy.value) < 0;
    });
  }
  strategy.addEventListener("change", toggle);
  toggle();
  function list(id) {
    return document.getElementById(id).value.split(/[\s,]+/).filter(function (s) { return s; });
  }
  document.getElementById("q-apply").addEventListener("click", function () {
    var rule;
    switch (strategy.value) {
      case "round_robin":
        rule = { strategy: "round_robin", users: list("q-users").map(function (u) { return u.split(":")[0]; }) };
        break;
      case "weighted":
        rule = { strategy: "round_robin", users: list("q-users").map(function (u) {
          var parts = u.split(":");
          var weight = parts.length > 1 ? Number(parts[1]) : 1;
          return { user: parts[0], weight: isNaN(weight) ? parts[1] : weight };
        }) };
        break;
      case "user":
        rule = { strategy: "user", user: document.getElementById("q-user").value.trim() };
        if (list("q-backup").length) rule.backup = list("q-backup");
        break;
      case "team":
        rule = { strategy: "team", team: document.getElementById("q-team").value.trim(), members: list("q-members") };
        if (document.getElementById("q-lead").value.trim()) rule.lead = document.getElementById("q-lead").value.trim();
        break;
    }
    if (document.getElementById("q-business").checked) rule.when = { hours: "business" };
    var doc;
    try { doc = JSON.parse(editor.value); } catch (e) { doc = {}; }
    if (typeof doc !== "object" || doc === null || Array.isArray(doc)) doc = {};
    doc.rules = [rule];
    editor.value = JSON.stringify(doc, null, 2);
    validate();
    editor.focus();
  });
})();
