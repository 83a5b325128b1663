// conductor-mcp web view: draws a run's workflow with the bundled Mermaid and, while the run may still change,
// polls its state and swaps in the fragments the server rendered (every value in them escaped there).
(() => {
  "use strict";
  const root = document.getElementById("run");
  if (!root) return;
  const runId = root.dataset.run;
  const box = document.getElementById("diagram");
  const source = document.getElementById("diagram-src");
  const liveDot = document.getElementById("live");
  let drawn = null;
  let count = 0;

  if (window.mermaid) {
    window.mermaid.initialize({
      startOnLoad: false,
      securityLevel: "strict",
      theme: "base",
      themeVariables: {fontFamily: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", fontSize: "14px",
                       primaryColor: "#f4f6fb", primaryBorderColor: "#8a94a6", lineColor: "#8a94a6"},
      flowchart: {htmlLabels: true, curve: "basis", useMaxWidth: true},
    });
  }

  async function draw(text) {
    if (text === drawn) return;
    drawn = text;
    if (!window.mermaid) {
      box.textContent = "The diagram needs JavaScript and the bundled Mermaid (mermaid.min.js).";
      return;
    }
    try {
      count += 1;
      const {svg} = await window.mermaid.render(`workflow-${count}`, text);
      box.innerHTML = svg; // Mermaid's own output, sanitised by it (securityLevel strict)
      box.dataset.rendered = String(count);
    } catch (err) {
      box.textContent = `The diagram could not be drawn: ${err}`;
    }
  }

  function replace(id, html) {
    const el = document.getElementById(id);
    if (!el || el.innerHTML === html) return;
    // keep what the reader opened or closed
    const open = new Map();
    el.querySelectorAll("details[id]").forEach((d) => open.set(d.id, d.open));
    el.innerHTML = html;
    el.querySelectorAll("details[id]").forEach((d) => {
      if (open.has(d.id)) d.open = open.get(d.id);
    });
  }

  let delay = 1000;
  async function poll() {
    let state;
    try {
      const res = await fetch(`/ui/runs/${encodeURIComponent(runId)}/state`, {
        headers: {accept: "application/json"}, credentials: "same-origin", cache: "no-store",
      });
      if (res.status === 401) {
        liveDot.textContent = "signed out";
        return;
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      state = await res.json();
      delay = 1000;
    } catch (err) {
      delay = Math.min(delay * 2, 15000); // the server restarting: try again, less often
      setTimeout(poll, delay);
      return;
    }
    replace("summary", state.summary);
    replace("result", state.result);
    replace("steps", state.steps);
    replace("related", state.related);
    replace("rating", state.rating); // the rating form, once the run has finished
    await draw(state.diagram);
    root.dataset.status = state.status;
    if (state.live) {
      setTimeout(poll, delay);
    } else {
      root.dataset.live = "0";
      liveDot.hidden = true;
    }
  }

  draw(source.textContent).then(() => {
    if (root.dataset.live === "1") setTimeout(poll, delay);
  });
})();
