// The dashboard's few scripts: copy buttons, the chart, live-view pause, "N s ago".
// Loaded from this origin only (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  // Copy buttons: data-copy names the element whose text is copied.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.classList.add("copied");
      setTimeout(function () { button.classList.remove("copied"); }, 1500);
    });
  });

  // Live events: pausing stops the poller's requests (htmx asks before each one).
  var paused = false;
  document.addEventListener("click", function (event) {
    var button = event.target.closest("#pause");
    if (!button) return;
    paused = !paused;
    button.setAttribute("aria-pressed", String(paused));
    button.textContent = paused ? "Resume" : "Pause";
  });
  document.addEventListener("htmx:confirm", function (event) {
    if (paused && event.target.id === "live-poller") event.preventDefault();
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.target.id === "live-rows") {
      var empty = document.getElementById("live-empty");
      if (empty) empty.remove();
    }
  });

  // "Last event received N s ago" keeps counting between refreshes.
  function ago(seconds) {
    if (seconds < 120) return seconds + " s ago";
    if (seconds < 7200) return Math.floor(seconds / 60) + " min ago";
    if (seconds < 172800) return Math.floor(seconds / 3600) + " h ago";
    return Math.floor(seconds / 86400) + " days ago";
  }
  setInterval(function () {
    document.querySelectorAll("[data-since]").forEach(function (el) {
      var since = parseFloat(el.getAttribute("data-since"));
      if (since) el.textContent = ago(Math.max(0, Math.floor(Date.now() / 1000 - since)));
    });
  }, 1000);

  // The overview's chart (uPlot): processed and failed events per step.
  function drawChart() {
    var el = document.getElementById("chart");
    if (!el || !window.uPlot) return;
    fetch(el.getAttribute("data-src"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        el.textContent = "";
        var opts = {
          width: el.clientWidth || 900,
          height: 300,
          series: [
            {},
            { label: "processed", stroke: "#1f5fbf", fill: "rgba(31,95,191,0.12)", width: 2,
              points: { show: false } },
            { label: "failed", stroke: "#b3261e", fill: "rgba(179,38,30,0.12)", width: 2,
              points: { show: false } },
          ],
          axes: [{}, { label: "events per " + data.step_minutes + " min", size: 60 }],
          scales: { y: { range: function (u, min, max) { return [0, Math.max(5, max * 1.1)]; } } },
        };
        new window.uPlot(opts, [data.times, data.processed, data.failed], el);
      });
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", drawChart);
  } else {
    drawChart();
  }
})();
