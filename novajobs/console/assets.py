"""The console's stylesheet and its one script, served from /static/ (the Content
Security Policy allows no inline script or style: these are all there is)."""

from novajobs.console.chart import BADGE_COLOURS

CSS = """
:root { font-family: system-ui, sans-serif; font-size: 14px; color: #212121; }
body { margin: 0; background: #fafafa; }
header { display: flex; gap: 1.5em; align-items: center; padding: .6em 1.2em;
         background: #263238; color: #fff; }
header a { color: #fff; text-decoration: none; margin-right: 1em; }
header .brand { font-weight: 700; font-size: 1.1em; }
header .who { margin-left: auto; }
header .who a, header .who .muted { color: #cfd8dc; }
main { padding: 1em 1.2em; }
h1 { font-size: 1.4em; margin: .2em 0 .6em; }
h2 { font-size: 1.1em; margin-top: 1.4em; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e0e0e0;
         vertical-align: top; }
th { background: #eceff1; font-weight: 600; }
table.facts { width: auto; }
.badge { color: #fff; border-radius: 3px; padding: 0 .45em; font-size: .9em;
         white-space: nowrap; }
.muted { color: #757575; }
.small { font-size: .85em; }
.said { max-width: 28em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
        color: #424242; font-size: .9em; }
.error { color: #b71c1c; }
form.inline { display: inline; margin: 0 .2em .2em 0; }
button { cursor: pointer; border: 1px solid #90a4ae; background: #fff; border-radius: 3px;
         padding: .2em .7em; }
button.danger { border-color: #c62828; color: #c62828; }
td.actions { white-space: nowrap; }
pre.log { background: #263238; color: #eceff1; padding: .8em; overflow: auto;
          font-size: 12px; line-height: 1.4; max-height: 40em; white-space: pre-wrap;
          word-break: break-word; }
pre.details { background: #fff; border: 1px solid #e0e0e0; padding: .6em; font-size: 12px;
              max-height: 30em; overflow: auto; }
svg.chart { background: #f5f5f5; }
.question { font-size: 1.1em; }
form.filters { display: block; margin: .6em 0; }
form.filters label { margin-right: .4em; white-space: nowrap; }
form.filters input { width: 9em; }
form.filters fieldset { border: 1px solid #e0e0e0; background: #fff; margin: 0; }
form.filters legend { font-size: .9em; color: #616161; }
p.summary { margin: 0 0 .8em; }
p.summary .badge { margin-right: .3em; font-size: 1em; padding: .1em .5em; }
""" + "".join(f".o-{name} {{ background: {tone}; }}\n" for name, tone in BADGE_COLOURS.items())

JS = """
// Follows a run started from this console: its log lines as they come, then its end.
(function () {
  const box = document.getElementById("trigger");
  if (!box) { return; }
  const id = box.dataset.id;
  const log = document.getElementById("log");
  let after = 0;
  function poll() {
    fetch("/api/triggers/" + encodeURIComponent(id) + "?after=" + after,
          {credentials: "same-origin"})
      .then(function (r) { return r.json(); })
      .then(function (t) {
        t.lines.forEach(function (line) {
          after = Math.max(after, line.seq);
          const extra = Object.keys(line).filter(function (k) {
            return ["seq", "ts", "level", "message", "job", "run_id"].indexOf(k) < 0;
          }).map(function (k) {
            const v = line[k];
            return k + "=" + (typeof v === "string" ? v : JSON.stringify(v));
          }).join(" ");
          log.textContent += (line.ts || "").slice(11, 23) + " " +
            (line.level || "").toUpperCase().padEnd(7) + " " + line.message +
            (extra ? "  " + extra : "") + "\\n";
        });
        if (t.run_id) {
          const run = document.getElementById("run");
          run.innerHTML = "";
          const a = document.createElement("a");
          a.href = "/runs/" + encodeURIComponent(t.job) + "/" + encodeURIComponent(t.run_id);
          a.textContent = "run " + t.run_id.slice(0, 8);
          run.appendChild(a);
        }
        if (t.running) { setTimeout(poll, 700); return; }
        document.getElementById("state").textContent = "finished";
        document.getElementById("exit").textContent = "exit " + t.exit_code;
      })
      .catch(function () { setTimeout(poll, 2000); });
  }
  poll();
})();
"""
