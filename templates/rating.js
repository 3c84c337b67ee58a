// Collect the rating form into a JSON and save it locally: a data: URL, no server, no request.
(function () {
  "use strict";
  var meta = JSON.parse(document.getElementById("rating-meta").textContent);
  function collect() {
    var ratings = [];
    document.querySelectorAll("fieldset.rating").forEach(function (fs) {
      var picked = fs.querySelector("input[type=radio]:checked");
      if (!picked) { return; }
      var artefacts = [];
      fs.querySelectorAll("input.artefact:checked").forEach(function (a) { artefacts.push(a.value); });
      ratings.push({check: fs.dataset.check, rating: picked.value, artefacts: artefacts,
                    comment: fs.querySelector("textarea.comment").value});
    });
    return {format: meta.format, version: meta.version, bids_name: meta.bids_name,
            bids_qc_version: meta.bids_qc_version, rater: document.getElementById("rater").value,
            timestamp: new Date().toISOString(), ratings: ratings};
  }
  window.bidsQcCollectRatings = collect;
  document.getElementById("download-ratings").addEventListener("click", function () {
    var data = collect();
    var link = document.createElement("a");
    link.href = "data:application/json;charset=utf-8," + encodeURIComponent(JSON.stringify(data, null, 1));
    link.download = meta.bids_name + "_ratings.json";
    document.body.appendChild(link);
    link.click();
    link.remove();
    document.getElementById("rating-status").textContent =
      data.ratings.length + " rating(s) saved as " + link.download;
  });
}());
