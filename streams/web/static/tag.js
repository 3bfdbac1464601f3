/* engage: the one tag a site embeds. It gives the browser a random first-party visitor id, sends page
   views, searches, marked clicks, cart and form events to the collector, and shows the offers the engine
   pushes to this visitor's open pages, reporting shown, accepted or declined.

   <script src="https://collector.example/tag.js" async></script>        (the collector is the script's origin)
   <form data-engage-search> <input name="q"> </form>                    a search: its first text field
   <button data-engage-click="compare-plans">                            a click worth knowing
   <button data-engage-cart="add" data-engage-value="19.99">             add_to_cart with its value
   <form data-engage-form="checkout">                                    form_start (first input), form_error (a
                                                                         field the browser found invalid),
                                                                         form_submit; the form's and field's
                                                                         names only, never what was typed

   Offers are shown as text (textContent), never as HTML: nothing in a message can run in the page. */
(function () {
  "use strict";
  var script = document.currentScript;
  var collector = (script && script.dataset.collector) || (script ? new URL(script.src).origin : location.origin);
  var KEY = "engage_vid";

  function visitorId() {
    var id = null;
    try { id = localStorage.getItem(KEY); } catch (e) { /* storage off: a fresh id per page */ }
    if (!id || !/^[A-Za-z0-9_-]{8,128}$/.test(id)) {
      id = (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random().toString(16).slice(2));
      try { localStorage.setItem(KEY, id); } catch (e) { /* kept for this page only */ }
    }
    return id;
  }

  var vid = visitorId();
  var counter = 0;

  function eventId() { counter += 1; return vid + "-" + Date.now().toString(36) + "-" + counter; }

  function post(path, body) {
    return fetch(collector + path, {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: JSON.stringify(body), keepalive: true, credentials: "omit"})
      .catch(function () { /* the page goes on without us */ });
  }

  function send(type, fields) {
    var event = {event_id: eventId(), visitor_id: vid, type: type, path: location.pathname.slice(0, 2048)};
    for (var k in fields) { if (fields[k] !== undefined && fields[k] !== null) { event[k] = fields[k]; } }
    return post("/events", event);
  }

  function report(offer, type) {
    return post("/outcomes", {delivery_id: offer.delivery_id, visitor_id: vid, type: type});
  }

  function show(offer) {
    if (Date.now() > offer.expires_at || document.querySelector("[data-engage-offer='" + offer.delivery_id + "']")) {
      return;
    }
    var box = document.createElement("div");
    box.setAttribute("role", "dialog");
    box.setAttribute("aria-live", "polite");
    box.dataset.engageOffer = offer.delivery_id;
    box.style.cssText = "position:fixed;right:1em;bottom:1em;max-width:22em;padding:1em;background:#fff;" +
      "border:1px solid #888;border-radius:6px;box-shadow:0 2px 8px rgba(0,0,0,.25);font:15px sans-serif;z-index:2147483647";
    var text = document.createElement("p");
    text.textContent = offer.message;  // text, never HTML
    box.appendChild(text);
    [["Yes, please", "accepted"], ["No, thanks", "declined"]].forEach(function (b) {
      var button = document.createElement("button");
      button.type = "button";
      button.textContent = b[0];
      button.dataset.engageAnswer = b[1];
      button.style.marginRight = "0.5em";
      button.addEventListener("click", function () { report(offer, b[1]); box.remove(); });
      box.appendChild(button);
    });
    document.body.appendChild(box);
    report(offer, "shown");
    setTimeout(function () { box.remove(); }, Math.max(0, offer.expires_at - Date.now()));
  }

  function listen() {
    if (!window.EventSource) { return; }
    var source = new EventSource(collector + "/messages?visitor_id=" + encodeURIComponent(vid));
    source.addEventListener("offer", function (e) {
      try { show(JSON.parse(e.data)); } catch (err) { /* not an offer we can show */ }
    });
  }

  document.addEventListener("submit", function (e) {
    var form = e.target.closest && e.target.closest("form[data-engage-search]");
    var field = form && form.querySelector("input[type=search], input[type=text], input:not([type])");
    if (field && field.value) { send("search", {query: field.value.slice(0, 512)}); }
  }, true);

  document.addEventListener("click", function (e) {
    var el = e.target.closest && e.target.closest("[data-engage-click], [data-engage-cart]");
    if (!el) { return; }
    if (el.dataset.engageCart) {
      var value = parseFloat(el.dataset.engageValue);
      send(el.dataset.engageCart === "remove" ? "remove_from_cart" : "add_to_cart",
           {value: isFinite(value) ? value : null});
    } else {
      send("click", {attributes: {name: String(el.dataset.engageClick).slice(0, 256)}});
    }
  }, true);

  // forms: which form and which field, never a value (what people type is theirs)
  function formOf(el) {
    var form = el && el.closest && el.closest("form[data-engage-form]");
    return form ? String(form.dataset.engageForm).slice(0, 256) : null;
  }
  var started = {};
  document.addEventListener("input", function (e) {
    var form = formOf(e.target);
    if (form && !started[form]) { started[form] = true; send("form_start", {attributes: {form: form}}); }
  }, true);
  document.addEventListener("invalid", function (e) {
    var form = formOf(e.target);
    if (form) {
      send("form_error", {attributes: {form: form, field: String(e.target.name || e.target.id || "").slice(0, 256)}});
    }
  }, true);
  document.addEventListener("submit", function (e) {
    var form = formOf(e.target);
    if (form) { send("form_submit", {attributes: {form: form}}); }
  }, true);

  window.engage = {visitorId: vid, send: send};
  send("page_view", {});
  listen();
})();
