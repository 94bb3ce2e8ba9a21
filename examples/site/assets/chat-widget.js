// A stand-in chat widget for the membergate demo. It reads the settings the
// gateway injects (window.hsConversationsSettings), shows who the chat would
// identify, and offers the small part of HubSpot's widget API the gateway
// uses (HubSpotConversations.clear, hsConversationsOnReady). Text only: no
// value from the settings is ever parsed as HTML.
(function () {
  "use strict";
  var settings = window.hsConversationsSettings || {};
  var storageKey = "demo-chat-conversation";

  var api = {
    clear: function () {
      try { window.localStorage.removeItem(storageKey); } catch (e) { /* private mode */ }
      render();
    },
    widget: {
      status: function () { return { loaded: true }; },
      load: function () {},
      refresh: function () { render(); },
      remove: function () { if (panel) { panel.remove(); } }
    }
  };
  window.HubSpotConversations = api;

  var panel;
  function render() {
    if (!document.body) { return; }
    if (!panel) {
      panel = document.createElement("aside");
      panel.setAttribute("aria-label", "Chat");
      panel.style.cssText = "position:fixed;right:1rem;bottom:1rem;max-width:18rem;padding:.75rem 1rem;" +
        "border-radius:.75rem;background:#0b3954;color:#fff;font:14px/1.4 system-ui,sans-serif;" +
        "box-shadow:0 4px 16px rgba(0,0,0,.25);z-index:2147483647";
      document.body.appendChild(panel);
    }
    var title = document.createElement("strong");
    title.textContent = "Chat with the club";
    var who = document.createElement("div");
    who.textContent = settings.identificationEmail
      ? "You are identified as " + settings.identificationEmail + " (token checked by the agent's inbox)."
      : "You are chatting as a guest.";
    panel.replaceChildren(title, who);
  }

  function ready() {
    render();
    var queue = window.hsConversationsOnReady || [];
    for (var i = 0; i < queue.length; i++) {
      try { queue[i](); } catch (e) { /* one callback must not stop the others */ }
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", ready);
  } else {
    ready();
  }
})();
