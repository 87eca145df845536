// Click a column header to sort its table (numbers by data-v, else text; empty cells last); click again to reverse.
function sortKey(cell) {
  var v = cell.getAttribute("data-v");
  if (v === null) { var t = cell.textContent.trim().toLowerCase(); return t === "" ? null : t; }
  return v === "" ? null : parseFloat(v);
}
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var current = th.getAttribute("aria-sort");
      var asc = current ? current === "descending" : th.getAttribute("data-first") !== "descending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", asc ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = sortKey(a.cells[col]), y = sortKey(b.cells[col]);
        if (x === null || y === null) { return (x === null) - (y === null); }
        var c = (typeof x === "number" && typeof y === "number") ? x - y : String(x).localeCompare(String(y));
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  table.setAttribute("data-sortable", "ready");
});
var filterBox = document.getElementById("filter");
if (filterBox) {
  filterBox.addEventListener("input", function () {
    var q = filterBox.value.toLowerCase();
    document.querySelectorAll("#latents tbody tr").forEach(function (r) {
      r.hidden = q !== "" && r.textContent.toLowerCase().indexOf(q) < 0;
    });
  });
}
