// Refresh every element with data-poll: fetch that URL every data-every ms and swap in the
// new HTML (data-pick: the element of that id in the answer). Written for dj-orchestrate.
document.querySelectorAll("[data-poll]").forEach(function (el) {
  var every = parseInt(el.dataset.every || "3000", 10);
  function tick() {
    fetch(el.dataset.poll, {headers: {"Accept": "text/html"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
      .then(function (html) {
        if (el.dataset.pick) {
          var found = new DOMParser().parseFromString(html, "text/html").querySelector(el.dataset.pick);
          if (found) el.innerHTML = found.innerHTML;
        } else {
          el.innerHTML = html;
        }
        el.classList.remove("stale");
      })
      .catch(function () { el.classList.add("stale"); })
      .finally(function () { setTimeout(tick, every); });
  }
  setTimeout(tick, every);
});
