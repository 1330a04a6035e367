// Updraft dashboard: live regions and the upload's progress bar. No library.
(function () {
  "use strict";
  var csrf = (document.querySelector("meta[name=csrf]") || {}).content || "";

  // Every element with data-live is replaced by its fresh copy from the same URL, every 2 s.
  function refresh() {
    var live = document.querySelectorAll("[data-live][id]");
    if (!live.length || document.hidden) return;
    fetch(location.href, { credentials: "same-origin", headers: { "x-live": "1" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html");
        live.forEach(function (el) {
          var next = fresh.getElementById(el.id);
          if (next && next.innerHTML !== el.innerHTML) el.innerHTML = next.innerHTML;
        });
      })
      .catch(function () {});
  }
  setInterval(refresh, 2000);

  // The upload: multipart to the API (the file last), with the session's CSRF token.
  var form = document.getElementById("upload");
  if (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var bar = document.getElementById("upload-progress");
      var status = document.getElementById("upload-status");
      var data = new FormData();
      ["title", "version", "type", "profiles", "description"].forEach(function (name) {
        var value = form.elements[name].value.trim();
        if (value) data.append(name, value);
      });
      data.append("file", form.elements.file.files[0]);
      var xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/v1/artifacts");
      xhr.setRequestHeader("x-csrf-token", csrf);
      bar.hidden = false;
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) {
          bar.value = Math.round((100 * e.loaded) / e.total);
          status.textContent = bar.value + " %";
        }
      };
      xhr.onload = function () {
        var body = {};
        try { body = JSON.parse(xhr.responseText); } catch (e) {}
        if (xhr.status === 201) {
          bar.value = 100;
          status.textContent = "Uploaded: ";
          var link = document.createElement("a");
          link.href = "/ui/artifacts/" + body.id;
          link.textContent = body.title + "@" + body.version;
          status.appendChild(link);
          form.dataset.uploaded = String(body.id);
        } else {
          status.textContent = (body.code || xhr.status) + ": " + (body.message || "the upload failed");
          status.className = "error";
        }
      };
      xhr.onerror = function () { status.textContent = "The connection failed."; status.className = "error"; };
      xhr.send(data);
    });
  }
})();
