// Strip + box plot per metric, drawn as inline SVG from the JSON above; every point links
// to its participant report. Strings are built once per plot (fast at 5,000 images).
// Only points the metric's own check flagged are coloured; the axis and its ticks come
// computed from group.py (m.axis, m.ticks).
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("plot-data").textContent);
  var W = 760, H = 92, L = 30, R = 30, MID = 34, BAND = 26, AXIS = H - 20;
  var flagged = {};
  data.flagged.forEach(function (i) { flagged[i] = true; });
  var links = data.names.map(function (n) { return encodeURIComponent(n) + ".html"; });
  function esc(s) {
    return String(s).replace(/[&<>"']/g, function (c) { return "&#" + c.charCodeAt(0) + ";"; });
  }
  function jitter(i) {  // deterministic, in [-1, 1]
    var x = Math.sin(i * 12.9898 + 78.233) * 43758.5453;
    return 2 * (x - Math.floor(x)) - 1;
  }
  function plot(m) {
    var vals = m.values, lo = m.axis[0], hi = m.axis[1], own = {};
    m.own.forEach(function (i) { own[i] = true; });
    function x(v) { return (L + (v - lo) / (hi - lo) * (W - L - R)).toFixed(1); }
    var b = m.box, parts = [], hist = m.hist;
    parts.push('<svg class="strip" width="' + W + '" height="' + H + '" viewBox="0 0 ' + W + " " + H + '" role="img">');
    if (hist) {  // large groups: every image's distribution behind the sampled points
      var top = Math.max.apply(null, hist.counts) || 1, step = (hist.hi - hist.lo) / hist.counts.length;
      hist.counts.forEach(function (c, k) {
        if (!c) { return; }
        var x0 = +x(hist.lo + k * step), x1 = +x(hist.lo + (k + 1) * step), h = Math.max(1, c / top * (AXIS - 2));
        parts.push('<rect class="bin" x="' + x0.toFixed(1) + '" y="' + (AXIS - h).toFixed(1) + '" width="' + Math.max(0.5, x1 - x0 - 0.5).toFixed(1) + '" height="' + h.toFixed(1) + '"><title>' + c + " image(s)</title></rect>");
      });
    }
    parts.push('<line x1="' + x(b[0]) + '" x2="' + x(b[4]) + '" y1="' + MID + '" y2="' + MID + '" stroke="#555"/>');
    parts.push('<rect x="' + x(b[1]) + '" y="' + (MID - BAND / 2) + '" width="' + Math.max(1, x(b[3]) - x(b[1])).toFixed(1) + '" height="' + BAND + '" fill="#e8eef7" stroke="#555"/>');
    parts.push('<line x1="' + x(b[2]) + '" x2="' + x(b[2]) + '" y1="' + (MID - BAND / 2) + '" y2="' + (MID + BAND / 2) + '" stroke="#222" stroke-width="2"/>');
    var later = [];
    for (var i = 0; i < vals.length; i++) {
      if (vals[i] === null) { continue; }
      var cls = own[i] ? "own" : "ok";
      var pt = '<a class="pt" href="' + links[i] + '" data-i="' + i + '" data-v="' + vals[i] + '"><circle cx="' + x(vals[i]) + '" cy="' + (MID + jitter(i) * BAND / 2).toFixed(1) + '" r="' + (cls === "ok" ? 2.5 : 3.5) + '" class="' + cls + '"/></a>';
      if (cls === "ok") { parts.push(pt); } else { later.push(pt); }  // flagged drawn on top
    }
    parts = parts.concat(later);
    parts.push('<g class="axis"><line x1="' + L + '" x2="' + (W - R) + '" y1="' + AXIS + '" y2="' + AXIS + '" stroke="#888"/>');
    m.ticks.forEach(function (t) {
      parts.push('<line x1="' + x(t[0]) + '" x2="' + x(t[0]) + '" y1="' + AXIS + '" y2="' + (AXIS + 4) + '" stroke="#888"/>' +
        '<text class="tick" x="' + x(t[0]) + '" y="' + (H - 4) + '" font-size="11" fill="#555" text-anchor="middle">' + esc(t[1]) + "</text>");
    });
    parts.push("</g>");
    parts.push("</svg>");
    return '<div class="metric"><h3><code>' + esc(m.name) + "</code> " + (m.unit ? '<span class="muted">(' + esc(m.unit) + ")</span> " : "") +
      '<span class="muted">n=' + m.n + ", " + m.n_flagged + " flagged" + (data.sampled ? ", " + vals.length + " drawn" : "") + "</span></h3>" + parts.join("") + "</div>";
  }
  var style = document.createElement("style");
  style.textContent = "circle.ok{fill:#8a8a8a;fill-opacity:.6}circle.own{fill:#c62828}a.pt:hover circle{stroke:#000;stroke-width:1.5}rect.bin{fill:#c9d6e8}.metric h3{margin:.6em 0 0}";
  document.head.appendChild(style);
  var container = document.getElementById("plots");
  // Eager for small groups; for large ones each plot is drawn as it nears the viewport
  // (5,000 images x 60 metrics would otherwise build 300,000 SVG nodes up front).
  var total = data.names.length * data.metrics.length;
  container.innerHTML = data.metrics.map(function (m, k) {
    return '<div class="slot" data-k="' + k + '" style="min-height:' + (H + 30) + 'px"></div>';
  }).join("");
  function draw(slot) {
    if (slot.dataset.done) { return; }
    slot.dataset.done = "1";
    slot.innerHTML = plot(data.metrics[+slot.dataset.k]);
  }
  var slots = Array.prototype.slice.call(container.querySelectorAll("div.slot"));
  window.bidsQcDrawAll = function () { slots.forEach(draw); };
  if (total <= 50000 || !("IntersectionObserver" in window)) {
    window.bidsQcDrawAll();
  } else {
    var seen = new IntersectionObserver(function (entries) {
      entries.forEach(function (e) { if (e.isIntersecting) { draw(e.target); seen.unobserve(e.target); } });
    }, {rootMargin: "800px 0px"});
    slots.forEach(function (slot) { seen.observe(slot); });
  }
  var tip = document.getElementById("tooltip");
  container.addEventListener("mouseover", function (ev) {
    var a = ev.target.closest ? ev.target.closest("a.pt") : null;
    if (!a) { tip.style.display = "none"; return; }
    tip.textContent = data.names[+a.dataset.i] + ": " + a.dataset.v +
      (flagged[+a.dataset.i] ? " (flagged by a check: see the review queue)" : "");
    tip.style.left = (ev.clientX + 12) + "px";
    tip.style.top = (ev.clientY + 12) + "px";
    tip.style.display = "block";
  });
}());
