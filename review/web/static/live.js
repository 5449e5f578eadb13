// Live state without a build step: poll a small stamp, swap in server-rendered HTML when it changes.
(function () {
  "use strict";

  function poll(panel, every, onChange) {
    // the stamp the page was rendered with: a change between rendering and the first poll is a change too
    let stamp = panel.dataset.stamp !== undefined ? Number(panel.dataset.stamp) : null;
    async function tick() {
      try {
        const reply = await fetch(panel.dataset.stampUrl, {credentials: "same-origin", cache: "no-store"});
        if (reply.redirected || !reply.ok) return;  // logged out or gone: leave the page as it is
        const data = await reply.json();
        if (stamp !== null && data.stamp !== stamp) await onChange(data);
        stamp = data.stamp;
      } catch (e) { /* the server restarts: try again next tick */ }
      finally { setTimeout(tick, every); }
    }
    tick();
  }

  async function swap(panel) {
    const reply = await fetch(panel.dataset.liveUrl, {credentials: "same-origin", cache: "no-store"});
    if (reply.ok && !reply.redirected) panel.innerHTML = await reply.text();
  }

  document.addEventListener("DOMContentLoaded", function () {
    const queue = document.getElementById("queue-panel");
    if (queue) poll(queue, 2000, () => swap(queue));

    const casePanel = document.getElementById("case-panel");
    if (casePanel) {
      let dirty = false;
      const form = document.getElementById("vote-form");
      if (form) form.addEventListener("input", () => { dirty = true; });
      poll(casePanel, 1500, async (data) => {
        const before = document.getElementById("case-state").dataset.state;
        await swap(casePanel);
        // what the user may do changed with the stage: reload, unless they are half-way through their votes
        if (data.state !== before && !dirty) window.location.reload();
      });
    }

    const toggle = document.getElementById("attention-toggle");
    if (toggle) toggle.addEventListener("change", function () {
      document.querySelectorAll("img.preview").forEach(function (img) {
        const url = new URL(img.src, window.location.href);
        url.searchParams.set("overlay", toggle.checked ? "attention" : "label");
        img.src = url.toString();
      });
    });
  });
})();
