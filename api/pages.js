'use strict';
/* pages.js - what the report and comparison pages do in the browser:
 * sort a table by a column.  The page works without it (the table comes
 * in the report's order).  A cell's data-v holds the value to sort by
 * (a number, or text); without it the cell's text is used.  The
 * dashboard loads this file too and calls slimdSortable() on a report it
 * shows in place. */
function slimdSortable(root) {
  for (const table of root.querySelectorAll('table.sortable')) {
    const heads = table.tHead ? Array.from(table.tHead.rows[0].cells) : [];
    heads.forEach((th, col) => {
      if (th.dataset.sortable === 'no' || th.querySelector('button')) return;
      const b = document.createElement('button');
      b.type = 'button';
      b.textContent = th.textContent;
      b.title = 'sort by ' + th.textContent;
      th.replaceChildren(b);
      b.addEventListener('click', () => {
        const asc = th.getAttribute('aria-sort') !== 'ascending';
        heads.forEach(h => h.removeAttribute('aria-sort'));
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        const num = th.classList.contains('n');
        const key = td => {
          const v = td ? (td.dataset.v !== undefined ? td.dataset.v : td.textContent) : '';
          if (!num) return v.toLowerCase();
          const x = parseFloat(v);
          return Number.isNaN(x) ? -Infinity : x;
        };
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        rows.sort((r1, r2) => {
          const a = key(r1.cells[col]), z = key(r2.cells[col]);
          return (a < z ? -1 : a > z ? 1 : 0) * (asc ? 1 : -1);
        });
        body.append(...rows);
      });
    });
  }
}
slimdSortable(document);
