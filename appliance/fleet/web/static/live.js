// Live updates for the bedtime clinic console (Server-Sent Events from /events).
//
// Alerts are built from the event's JSON with textContent only (never innerHTML), so a title or message
// a box sent cannot become markup. Other changes re-fetch a server-rendered (autoescaped) fragment for
// each element marked data-live-src whose data-live-on lists the event kind.
(function () {
  "use strict";
  if (!window.EventSource || !document.querySelector("#live-status")) return;

  var pending = new Map();  // element -> timer: coalesce bursts of events into one fetch

  function refresh(el) {
    if (pending.has(el)) return;
    pending.set(el, setTimeout(function () {
      pending.delete(el);
      fetch(el.getAttribute("data-live-src"), { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) {
          if (r.status === 401) { window.location.assign("/login"); return null; }
          return r.ok ? r.text() : null;
        })
        .then(function (html) { if (html !== null) el.innerHTML = html; })
        .catch(function () { /* the next event retries */ });
    }, 150));
  }

  function addAlert(a) {
    document.querySelectorAll("[data-live-alerts]").forEach(function (list) {
      var onlyBox = list.getAttribute("data-box");
      if (onlyBox && onlyBox !== a.box_id) return;
      if (list.querySelector('[data-alert-id="' + String(a.ref_id) + '"]')) return;
      var li = document.createElement("li");
      li.className = "alert new sev-" + (["info", "warning", "critical"].indexOf(a.severity) >= 0 ? a.severity : "info");
      li.setAttribute("data-alert-id", String(a.ref_id));
      li.setAttribute("data-shown-ms", String(Date.now()));
      var when = document.createElement("span"); when.className = "when"; when.textContent = a.received || "";
      var box = document.createElement("a"); box.className = "box"; box.textContent = a.box_id;
      box.href = "/boxes/" + encodeURIComponent(a.box_id);
      var title = document.createElement("strong"); title.className = "title"; title.textContent = a.title || "";
      var msg = document.createElement("span"); msg.className = "message"; msg.textContent = a.message || "";
      li.append(when, " ", box, " ", title, " ", msg);
      list.prepend(li);
      while (list.children.length > 200) list.removeChild(list.lastElementChild);
      var empty = document.getElementById("alert-empty");
      if (empty) empty.hidden = true;
    });
  }

  function onEvent(kind) {
    return function (ev) {
      var data;
      try { data = JSON.parse(ev.data); } catch (e) { return; }
      if (kind === "alert") addAlert(data);
      document.querySelectorAll("[data-live-src]").forEach(function (el) {
        var kinds = (el.getAttribute("data-live-on") || "").split(/\s+/);
        if (kinds.indexOf(kind) >= 0) refresh(el);
      });
    };
  }

  var after = document.body.getAttribute("data-last-event") || "0";
  var status = document.getElementById("live-status");
  var source = new EventSource("/events?after=" + encodeURIComponent(after));
  ["alert", "box", "config", "rollout", "report", "broker"].forEach(function (k) { source.addEventListener(k, onEvent(k)); });
  source.addEventListener("logout", function () { source.close(); window.location.assign("/login"); });
  source.onopen = function () { status.className = "live on"; status.setAttribute("data-connected", "1"); };
  source.onerror = function () { status.className = "live off"; status.removeAttribute("data-connected"); };
})();
