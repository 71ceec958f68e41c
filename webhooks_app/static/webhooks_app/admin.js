"use strict";
// webhooks_app admin: copy the one-time secret, add key/value rows, select all deliveries.
(function () {
  function copy(button) {
    const input = document.getElementById(button.dataset.copyTarget);
    if (!input) return;
    const done = function () {
      const label = button.textContent;
      button.textContent = button.dataset.copiedLabel || "Copied";
      setTimeout(function () { button.textContent = label; }, 2000);
    };
    const fallback = function () {
      input.focus();
      input.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* selection stays for Ctrl+C */ }
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(input.value).then(done, fallback);
    } else {
      fallback();
    }
  }

  function addRow(button) {
    const tbody = button.closest(".wh-kv").querySelector("tbody");
    const last = tbody.querySelector("tr.wh-kv-row:last-child");
    const row = last.cloneNode(true);
    row.querySelectorAll("input").forEach(function (i) { i.value = ""; });
    tbody.appendChild(row);
    row.querySelector("input").focus();
  }

  document.addEventListener("click", function (e) {
    const target = e.target;
    if (target.matches(".wh-copy")) { copy(target); }
    else if (target.matches(".wh-kv-add")) { addRow(target); }
  });

  document.addEventListener("change", function (e) {
    if (e.target.id === "action-toggle" && document.body.classList.contains("wh-page")) {
      document.querySelectorAll("input.action-select").forEach(function (box) {
        box.checked = e.target.checked;
      });
    }
  });
})();
