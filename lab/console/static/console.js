// The lab console's script: views, live panels, actions. No build step, no libraries.
//
// The server says which panels changed (server-sent events on /events); the page fetches
// each changed panel's fragment (/panels/NAME) and swaps it in, keeping focus and anything
// typed. Forms that post to /actions/ are sent with the session's CSRF token, and the
// answer shows in the status line. Without this script the page still renders and its
// forms still post.
"use strict";

(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const messageEl = document.getElementById("message");
  const errorEl = document.getElementById("error");
  const liveEl = document.getElementById("live");
  const panels = new Map(); // name -> {el, busy, again}
  let selectedPhone = "";

  document.documentElement.classList.add("js");

  // -- views -------------------------------------------------------------------------------
  const views = Array.from(document.querySelectorAll("main > .view"));
  const tabs = Array.from(document.querySelectorAll("nav.views a[data-view]"));

  function showView(id) {
    if (!views.some((v) => v.id === id)) id = views[0].id;
    for (const view of views) view.hidden = view.id !== id;
    for (const tab of tabs) {
      if (tab.dataset.view === id) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
    // Panels that changed while hidden are brought up to date now.
    for (const [name, panel] of panels) {
      if (panel.el.dataset.stale && isShown(panel.el)) refresh(name);
    }
  }

  function isShown(el) {
    const view = el.closest(".view");
    return !view || !view.hidden;
  }

  window.addEventListener("hashchange", () => showView(location.hash.slice(1)));
  for (const tab of tabs) {
    tab.addEventListener("click", (event) => {
      // A tab shows its view from the top, rather than jumping to the section's anchor.
      event.preventDefault();
      history.pushState(null, "", "#" + tab.dataset.view);
      showView(tab.dataset.view);
      window.scrollTo(0, 0);
    });
  }

  // -- panels ------------------------------------------------------------------------------
  for (const el of document.querySelectorAll("[data-panel]")) {
    panels.set(el.dataset.panel, { el, busy: false, again: false });
  }

  function focusKey(el) {
    if (!el || el === document.body) return null;
    if (el.id) return "#" + el.id;
    if (el.tagName === "A") return "a|" + (el.getAttribute("aria-label") || el.textContent);
    if (el.form) {
      const fields = new URLSearchParams(new FormData(el.form));
      fields.delete("_csrf");
      return el.form.getAttribute("action") + "?" + fields.toString() + "|" + el.textContent;
    }
    return null;
  }

  function findByKey(container, key) {
    if (key.startsWith("#")) return document.getElementById(key.slice(1));
    for (const link of container.querySelectorAll("a")) {
      if (focusKey(link) === key) return link;
    }
    for (const button of container.querySelectorAll("button")) {
      if (focusKey(button) === key) return button;
    }
    return null;
  }

  function isDirty(el) {
    if (el.type === "checkbox" || el.type === "radio") return el.checked !== el.defaultChecked;
    if (el.tagName === "SELECT") return Array.from(el.options).some((o) => o.selected !== o.defaultSelected);
    return el.value !== el.defaultValue;
  }

  function swap(container, html) {
    const active = document.activeElement;
    const key = container.contains(active) ? focusKey(active) : null;
    const kept = [];
    for (const el of container.querySelectorAll("input[id], select[id], textarea[id]")) {
      if (isDirty(el)) kept.push([el.id, el.type === "checkbox" ? el.checked : el.value]);
    }
    container.innerHTML = html;
    for (const [id, value] of kept) {
      const el = document.getElementById(id);
      if (!el) continue;
      if (el.type === "checkbox") el.checked = value;
      else el.value = value;
    }
    if (key) {
      const again = findByKey(container, key);
      if (again) again.focus({ preventScroll: true });
    }
  }

  async function refresh(name) {
    const panel = panels.get(name);
    if (!panel) return;
    if (!isShown(panel.el)) {
      panel.el.dataset.stale = "1";
      return;
    }
    if (panel.busy) {
      panel.again = true;
      return;
    }
    panel.busy = true;
    delete panel.el.dataset.stale;
    try {
      const response = await fetch(panel.el.dataset.src, {
        headers: { Accept: "text/html" },
        credentials: "same-origin",
      });
      const text = await response.text();
      if (response.ok) {
        swap(panel.el, text);
        panel.el.dataset.updated = String(Date.now());
      } else {
        showError(text);
      }
    } catch (err) {
      panel.el.dataset.stale = "1";
    } finally {
      panel.busy = false;
      if (panel.again) {
        panel.again = false;
        refresh(name);
      }
    }
  }

  function refreshAll() {
    for (const name of panels.keys()) refresh(name);
  }

  // -- live updates ------------------------------------------------------------------------
  function setLive(state, text) {
    liveEl.dataset.state = state;
    liveEl.textContent = text;
  }

  function connect() {
    const source = new EventSource("/events");
    let opened = false;
    source.addEventListener("hello", (event) => {
      const data = JSON.parse(event.data);
      labState(data.connected);
      // Anything may have changed while the stream was down.
      if (opened) refreshAll();
      opened = true;
    });
    source.addEventListener("changed", (event) => {
      const data = JSON.parse(event.data);
      labState(data.connected);
      for (const name of data.panels) {
        if (name === "phone") {
          const phones = data.phones || [];
          const mine = phones.length === 0 || phones.includes("*") || phones.includes(selectedPhone);
          if (!selectedPhone || !mine) continue;
        }
        refresh(name);
      }
    });
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused for good: the console was restarted (sessions end with it) or is gone.
        setLive("connecting", "disconnected: open the console's new login link");
      } else {
        setLive("connecting", "reconnecting…");
      }
    };
  }

  function labState(connected) {
    if (connected) setLive("live", "live");
    else setLive("lab-away", "lab not reachable");
  }

  // -- actions -----------------------------------------------------------------------------
  function showMessage(text) {
    errorEl.textContent = "";
    messageEl.textContent = text;
  }

  function showError(text) {
    messageEl.textContent = "";
    errorEl.textContent = text;
  }

  document.addEventListener("submit", async (event) => {
    const form = event.target;
    const action = form.getAttribute("action") || "";
    if (!action.startsWith("/actions/")) return;
    event.preventDefault();
    const buttons = form.querySelectorAll("button");
    for (const b of buttons) b.disabled = true;
    try {
      const response = await fetch(action, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRF-Token": csrf, Accept: "application/json" },
        credentials: "same-origin",
      });
      const type = response.headers.get("Content-Type") || "";
      const answer = type.includes("json") ? await response.json() : { error: await response.text() };
      if (response.ok) {
        showMessage(answer.message);
        if (form.dataset.reset !== undefined) form.reset();
      } else {
        showError(answer.error || response.statusText);
      }
    } catch (err) {
      showError("the console did not answer: " + err);
    } finally {
      for (const b of buttons) b.disabled = false;
    }
  });

  // -- the wall's pages and the phone chosen ----------------------------------------------
  document.addEventListener("click", async (event) => {
    const link = event.target.closest("a[data-page], a[data-phone]");
    if (!link) return;
    event.preventDefault();
    if (link.dataset.page) {
      const wall = panels.get("wall");
      wall.el.dataset.src = "/panels/wall?page=" + encodeURIComponent(link.dataset.page);
      const text = link.textContent;
      await refresh("wall");
      // Keep the keyboard where it was: on the same pager link, or the other one.
      const again = Array.from(wall.el.querySelectorAll("a[data-page]"));
      const same = again.find((a) => a.textContent === text) || again[0];
      if (same) same.focus();
    } else {
      choosePhone(link.dataset.phone);
      await refresh("phone");
      const title = document.getElementById("phone-detail-title");
      if (title) {
        title.focus({ preventScroll: true });
        title.scrollIntoView({ block: "nearest" });
      }
    }
  });

  function choosePhone(mac) {
    selectedPhone = mac;
    const detail = panels.get("phone");
    if (detail) detail.el.dataset.src = "/panels/phone?phone=" + encodeURIComponent(mac);
  }

  // -- the lab's clock ---------------------------------------------------------------------
  const timeEl = document.getElementById("lab-time");

  function tick() {
    const start = Date.parse(timeEl.dataset.start || "");
    const at = Number(timeEl.dataset.at || "0");
    const scale = Number(timeEl.dataset.scale || "1");
    const now = Number.isNaN(start) ? Date.now() : start + (Date.now() - at * 1000) * scale;
    const text = new Date(now).toISOString().slice(0, 19).replace("T", " ") + " UTC";
    timeEl.textContent = text;
    timeEl.setAttribute("datetime", new Date(now).toISOString());
  }

  // -- start -------------------------------------------------------------------------------
  const detail = panels.get("phone");
  if (detail) selectedPhone = new URL(detail.el.dataset.src, location.href).searchParams.get("phone") || "";
  showView(location.hash.slice(1));
  tick();
  setInterval(tick, 500);
  connect();
})();
