// The rules editor: the form and the JSON are two views of one document. An edit of the form
// asks the server for the JSON it makes (and, when the form changes shape, for the form drawn
// again); an edit of the JSON asks for the form drawn from it. Either way the server answers
// SetRules' own check of the JSON, whose field path puts the error next to its input. The
// preview and the save use the JSON. Without scripts the JSON still saves.
(function () {
  var page = document.getElementById("assignment");
  var editor = document.getElementById("rules_json");
  var status = document.getElementById("validation");
  var preview = document.getElementById("preview");
  var builder = document.getElementById("rules-builder");
  var view = document.getElementById("rules-form-view");
  var formStatus = document.getElementById("form-status");
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

  // The input (or group) a field path of the check belongs to: the longest data-path that
  // starts it (`rules[0].users[1].weight` → the input of `rules[0].users`).
  function inputFor(field) {
    var best = null, length = -1;
    builder.querySelectorAll("[data-path]").forEach(function (element) {
      var path = element.dataset.path;
      var starts = field === path || field.indexOf(path + ".") === 0 || field.indexOf(path + "[") === 0;
      if (starts && path.length > length) { best = element; length = path.length; }
    });
    return best;
  }

  function markField(ok, message, field) {
    builder.querySelectorAll("[aria-invalid='true']").forEach(function (element) {
      element.setAttribute("aria-invalid", "false");
    });
    var old = document.getElementById("field-error");
    if (old) old.remove();
    if (ok || !field) return;
    var target = inputFor(field);
    if (!target) return;
    var note = document.createElement("p");
    note.id = "field-error";
    note.className = "field-error";
    note.setAttribute("role", "alert");
    var code = document.createElement("code");
    code.className = "field";
    code.textContent = field;
    note.appendChild(code);
    note.appendChild(document.createTextNode(" " + message));
    target.setAttribute("aria-invalid", "true");
    var folded = target.closest("details");
    if (folded) folded.open = true;
    if (target.matches("input, select")) {
      var described = (target.getAttribute("aria-describedby") || "").split(" ").filter(function (id) { return id && id !== "field-error"; });
      described.push("field-error");
      target.setAttribute("aria-describedby", described.join(" "));
    }
    target.insertAdjacentElement("afterend", note);
  }

  function show(ok, message, field, problem) {
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
    markField(ok, problem || message, field);
  }

  function fields() {
    var out = [];
    new FormData(builder).forEach(function (value, name) { out.push([name, String(value)]); });
    return out;
  }

  // Answers come back in any order; only the latest edit's is taken in. An edit typed is sent
  // after a short pause (`queued`), or at once when the JSON is about to be used.
  // `redraw`: the form is to be drawn by the next answer (one that should have was dropped, or
  // is not taken in yet).
  var asked = 0, pending = null, timer = null, queued = null, redraw = false;
  // The form is busy from an edit until the answer to the last one is taken in.
  function busy(yes) { builder.setAttribute("aria-busy", yes ? "true" : "false"); }
  function ask(body, fromForm) {
    var mine = ++asked;
    busy(true);
    if (body.render) redraw = true;
    pending = post("/app/assignment/editor", body)
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        if (mine !== asked) return;
        if (fromForm) editor.value = answer.rules_json;
        // An edit typed since is not in this form: drawing it now would lose that typing, so
        // the next answer draws it instead.
        if (answer.form !== undefined && !queued) {
          redraw = false;
          var active = document.activeElement;
          var focused = active && builder.contains(active) ? active.id : "";
          // Conditions unfolded by hand stay so, unless the rules moved under them.
          var unfolded = [];
          if (!body.action) view.querySelectorAll("details[open]").forEach(function (d) { unfolded.push(d.id); });
          view.innerHTML = answer.form;
          unfolded.forEach(function (id) { var d = document.getElementById(id); if (d) d.open = true; });
          var focus = document.getElementById(answer.focus || focused);
          if (focus && fromForm && focus !== document.activeElement) focus.focus();
        }
        if (answer.ok) show(true, answer.summary);
        else show(false, answer.error || "not valid", answer.field, answer.problem);
        if (!queued) busy(false);
      })
      .catch(function () {
        busy(false);
        show(false, "could not check the rules: is the dashboard reachable?");
      });
    return pending;
  }
  function cancel() {
    clearTimeout(timer);
    timer = null;
    queued = null;
  }
  function fromForm(action, render) {
    cancel();
    return ask({ fields: fields(), action: action || "", render: !!render || redraw }, true);
  }
  function fromJson() {
    cancel();
    return ask({ rules_json: editor.value, render: true }, false);
  }
  function later(send) {
    cancel();
    busy(true);
    queued = send;
    timer = setTimeout(send, 300);
  }
  // The last edit, sent and answered.
  function settled() {
    if (queued) return queued();
    return pending || Promise.resolve();
  }

  // A refusal of a save, shown by the server: put it next to its field too.
  var refused = status.querySelector("code.field");
  if (refused) markField(false, status.textContent.slice(refused.textContent.length).trim(), refused.textContent);

  editor.addEventListener("input", function () { later(fromJson); });
  if (builder) {
    builder.addEventListener("input", function (event) {
      if (event.target.matches("input:not([type=checkbox])")) later(function () { return fromForm(); });
    });
    builder.addEventListener("change", function (event) {
      var target = event.target;
      // Drawn again: a strategy shows its own fields, a condition counts in its summary. The
      // focus stays on the control by its id.
      if (target.matches("select, input[type=checkbox]")) fromForm("", true);
    });
    builder.addEventListener("click", function (event) {
      var button = event.target.closest("button[data-action]");
      if (!button) return;
      var action = button.dataset.action;
      fromForm(action, true).then(function () {
        var words = { add: "Rule added", remove: "Rule removed", up: "Rule moved up", down: "Rule moved down" };
        formStatus.textContent = words[action.split(":")[0]] || "";
      });
    });
  }

  document.getElementById("simulate").addEventListener("click", function () {
    preview.innerHTML = "<p class=\"muted\">Replaying…</p>";
    settled().then(function () {
      return post("/app/assignment/simulate", {
        rules_json: editor.value,
        days: parseInt(document.getElementById("days").value, 10)
      });
    })
      .then(function (response) { return response.text(); })
      .then(function (html) { preview.innerHTML = html; })
      .catch(function () { preview.innerHTML = "<p class=\"error\">The preview is not available.</p>"; });
  });

  var form = document.getElementById("rules-form");
  form.addEventListener("submit", function (event) {
    if (!queued) return;
    event.preventDefault();
    settled().then(function () { form.submit(); });
  });
})();
