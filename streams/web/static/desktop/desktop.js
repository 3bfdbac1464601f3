// The agent desktop: asks /desktop/offers with the token every two seconds and draws the offers with text
// nodes only (never as HTML), so nothing a visitor or a rule wrote can run here.
(function () {
  "use strict";
  var KEY = "engage.desktop.token";
  var POLL_MS = 2000;
  var status = document.getElementById("status");
  var login = document.getElementById("login");
  var list = document.getElementById("offers");
  var template = document.getElementById("card");
  var timer = null;

  // a token given in the address's fragment (never sent to a server) is kept for this tab, and removed from
  // the address bar and history
  function tokenFromAddress() {
    if (location.hash.indexOf("#token=") !== 0) return false;
    sessionStorage.setItem(KEY, decodeURIComponent(location.hash.slice(7)));
    history.replaceState(null, "", location.pathname);
    return true;
  }
  tokenFromAddress();
  window.addEventListener("hashchange", function () {
    if (tokenFromAddress()) { clearTimeout(timer); ask(); }
  });

  function text(root, selector, value) {
    root.querySelector(selector).textContent = value == null ? "" : String(value);
  }

  function lines(root, selector, items) {
    var ol = root.querySelector(selector);
    (items.length ? items : ["(none)"]).forEach(function (item) {
      var li = document.createElement("li");
      li.textContent = item;
      ol.appendChild(li);
    });
  }

  function card(o, now) {
    var node = template.content.firstElementChild.cloneNode(true);
    node.classList.add(o.state);
    node.dataset.deliveryId = o.delivery_id;
    var who = o.customer_name ? o.customer_name + " (" + o.customer_id + ")"
      : o.customer_id ? o.customer_id : "anonymous visitor " + o.visitor_id;
    text(node, ".who", who);
    text(node, ".state", o.state);
    text(node, ".channel", o.channel);
    text(node, ".action", o.action_id);
    text(node, ".skill", o.skill ? o.skill + " agents" : "any agent");
    var left = Math.round((o.expires_at - now) / 1000);
    text(node, ".expires", left > 0 ? "expires in " + left + " s" : "expired");
    text(node, ".reason", o.reason);
    text(node, ".evidence", o.evidence ? "Saw: " + o.evidence : "");
    var value = Object.keys(o.value).map(function (k) { return k.replace("_", " ") + " " + o.value[k]; });
    if (o.cart_value) value.push("cart " + o.cart_value);
    text(node, ".value", value.length ? value.join(" · ") : (o.known ? "no value known" : "anonymous visitor"));
    text(node, ".message", o.message);
    lines(node, ".journey", o.journey);
    lines(node, ".before", o.offered_before);
    return node;
  }

  function show(answer) {
    var nodes = answer.offers.map(function (o) { return card(o, answer.now); });
    list.replaceChildren.apply(list, nodes);
    status.textContent = answer.offers.length ? answer.offers.length + " offer(s)" : "No offers yet.";
  }

  var asking = 0;  // the latest ask: an earlier one still in flight schedules no more (one poll at a time)

  function ask() {
    var mine = ++asking;
    var token = sessionStorage.getItem(KEY);
    if (!token) { login.hidden = false; return; }
    fetch("/desktop/offers", { headers: { "Authorization": "Bearer " + token }, cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) {
          sessionStorage.removeItem(KEY);
          status.textContent = "That token was refused.";
          login.hidden = false;
          return null;
        }
        if (!r.ok) { status.textContent = "The desktop answered " + r.status + "; trying again."; return null; }
        return r.json();
      })
      .then(function (answer) { if (answer) { login.hidden = true; show(answer); } })
      .catch(function () { status.textContent = "The desktop cannot be reached; trying again."; })
      .then(function () { if (mine === asking) timer = setTimeout(ask, POLL_MS); });
  }

  login.addEventListener("submit", function (e) {
    e.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById("token").value);
    document.getElementById("token").value = "";
    clearTimeout(timer);
    ask();
  });
  ask();
}());
