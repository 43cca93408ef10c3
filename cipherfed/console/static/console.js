// Live fragments: each element with data-live gets its content from a server-sent event stream.
// The server renders and escapes the HTML; nothing here builds markup from data.
"use strict";
document.querySelectorAll("[data-live]").forEach(function (el) {
  var source = new EventSource(el.getAttribute("data-live"));
  source.addEventListener("update", function (event) {
    el.innerHTML = event.data;
    el.setAttribute("data-updates", String(Number(el.getAttribute("data-updates") || 0) + 1));
    document.body.classList.remove("offline");
  });
  source.addEventListener("open", function () { document.body.classList.remove("offline"); });
  source.addEventListener("error", function () { document.body.classList.add("offline"); });
});
