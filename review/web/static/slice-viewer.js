// The case page's slice viewer (review/web/slice_viewer.py): the scan in three planes with the label version under
// review, organs toggled one by one, the attention map as a heat overlay (off until its box is ticked), a click that
// places a comment's point, and the comments' point links, which move the crosshair there instead of reloading.
// NiiVue comes from this server (/review/vendor/niivue.js); no inline script (the pages' CSP forbids it): the page
// hands over its URLs in data- attributes of #viewer.
const root = document.getElementById("viewer");
const statusEl = document.getElementById("viewer-status");
const picked = document.getElementById("picked");

// NiiVue reports world positions in NIfTI's RAS+; DICOM and ITK (and the review store) use LPS+: x and y negated
// (the same flip both ways).
const toLPS = (ras) => [-ras[0], -ras[1], ras[2]];
const toRAS = toLPS;
const PAD = 4;   // CSS pixels between the planes

// NiiVue's built-in multiplanar layouts: the box the three planes fill at one scale, in units of the scan's longest
// extent (x, y, z: NiiVue's volScale), and how many planes across and down (for the padding between them).
const LAYOUTS = [
  { name: "ROW", box: ([x, y, z]) => [2 * x + y, Math.max(y, z)], across: 3, down: 1 },
  { name: "COLUMN", box: ([x, y, z]) => [Math.max(x, y, z), y + 2 * z], across: 1, down: 3 },
  { name: "GRID", box: ([x, y, z]) => [x + y, y + z], across: 2, down: 2 },
];

// The layout that shows the planes largest in the room there is, and the canvas size that fits it exactly: every
// plane at the same mm per pixel (so a structure is as long in each plane, and the crosshair lines continue from one
// plane into the next), and no letterbox. A 30-slice scan gets its planes in a column, a thick one the 2 x 2 grid.
function chooseLayout(volScale, maxWidth, maxHeight) {
  let best = null;
  for (const layout of LAYOUTS) {
    const [w, h] = layout.box(volScale);
    const padW = (layout.across - 1) * PAD;
    const padH = (layout.down - 1) * PAD;
    const scale = Math.min((maxWidth - padW) / w, (maxHeight - padH) / h);
    if (!best || scale > best.scale) {
      best = { name: layout.name, scale, width: Math.floor(scale * w + padW), height: Math.floor(scale * h + padH) };
    }
  }
  return best;
}

// A comment's point as its link gives it: ?at=x,y,z (mm, LPS) or ?voxel=i,j,k (the file's voxel, as ITK counts it).
function pointOf(params) {
  for (const key of ["at", "voxel"]) {
    const values = (params.get(key) || "").split(",").map(Number);
    if (values.length === 3 && values.every(Number.isFinite)) return { [key]: values };
  }
  return null;
}

// The previews below follow the point, as they would on the link's page.
function focusPreviews(params) {
  document.querySelectorAll("img.preview").forEach((img) => {
    const url = new URL(img.src, window.location.href);
    for (const key of ["at", "voxel"]) {
      if (params.has(key)) url.searchParams.set(key, params.get(key));
      else url.searchParams.delete(key);
    }
    img.src = url.toString();
  });
  const focus = document.getElementById("preview-focus");
  const point = pointOf(params);
  if (focus && point) {
    focus.textContent = point.at
      ? `, through the point ${point.at.join(", ")} mm (cross)`
      : `, through the voxel ${point.voxel.join(", ")} (cross)`;
  }
}

let goTo = null;      // moves the crosshair, once the viewer is ready
let pending = null;   // a point asked for before that

// A comment's point link (in the case panel, which live.js swaps in: hence one listener on the document) moves the
// viewer to the point in place. Without JavaScript it is a plain link to this page with the point, which the previews
// (and, on load, the viewer) show; with a modifier key it opens that page elsewhere, as links do.
document.addEventListener("click", (event) => {
  const link = event.target instanceof Element ? event.target.closest("a.point") : null;
  if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const url = new URL(link.href, window.location.href);
  const point = pointOf(url.searchParams);
  if (!point || url.pathname !== window.location.pathname) return;
  event.preventDefault();
  history.replaceState(history.state, "", url);   // the address names the point, as after the link's reload
  focusPreviews(url.searchParams);
  const failed = root.dataset.ready === "error";
  (failed ? document.querySelector("section.previews") : root).scrollIntoView({ block: "start" });
  if (goTo) goTo(point);
  else pending = point;
});

function invert4(m) {   // a 4x4 matrix (rows), Gauss-Jordan with partial pivoting
  const a = m.map((row, i) => [...row, ...[0, 1, 2, 3].map((j) => (i === j ? 1 : 0))]);
  for (let c = 0; c < 4; c++) {
    let p = c;
    for (let r = c + 1; r < 4; r++) if (Math.abs(a[r][c]) > Math.abs(a[p][c])) p = r;
    [a[c], a[p]] = [a[p], a[c]];
    const d = a[c][c];
    for (let j = 0; j < 8; j++) a[c][j] /= d;
    for (let r = 0; r < 4; r++) {
      if (r === c) continue;
      const f = a[r][c];
      for (let j = 0; j < 8; j++) a[r][j] -= f * a[c][j];
    }
  }
  return a.map((row) => row.slice(4));
}

// The voxel (i, j, k) of the file as stored, as ITK counts it: NiiVue's own `vox` is in its RAS-reoriented grid.
function fileIndex(volume, ras) {
  const inv = volume.inverseAffine ?? (volume.inverseAffine = invert4(volume.hdr.affine));
  const v = [ras[0], ras[1], ras[2], 1];
  return [0, 1, 2].map((i) => Math.round(inv[i].reduce((s, x, j) => s + x * v[j], 0)));
}

async function start() {
  const d = root.dataset;
  const { Niivue, NVImage, cmapper, SLICE_TYPE, MULTIPLANAR_TYPE, SHOW_RENDER } = await import(d.niivue);
  const initial = pointOf(new URLSearchParams(window.location.search));   // this page opened at a comment's point
  const organs = JSON.parse(d.organs);
  const shown = new Map(organs.map((o) => [o.id, true]));
  const nv = new Niivue({
    backColor: [0, 0, 0, 1],
    crosshairColor: [0, 1, 0, 0.8],
    crosshairWidth: 1.5,
    crosshairWidthUnit: "mm",              // one voxel is under a pixel on a 512 x 512 CT: in mm it shows
    isRadiologicalConvention: true,        // the patient's right on the screen's left, as radiologists read
    multiplanarShowRender: SHOW_RENDER.NEVER,
    multiplanarLayout: MULTIPLANAR_TYPE.GRID,   // until the scan is in: then fit() chooses
    multiplanarPadPixels: PAD,
    dragAndDropEnabled: false,             // a dropped file must not replace the case's volumes
    isNearestInterpolation: true,
    isForceMouseClickToVoxelCenters: true, // a click picks a voxel centre: its mm and its index agree
    loadingText: "loading ...",
    logLevel: "warn",
  });
  window.nv = nv;   // for the console (and the browser test, which reads where the tiles are)
  const canvas = document.getElementById("nv-canvas");
  await nv.attachToCanvas(canvas);

  const scan = { url: d.scanUrl, name: d.scanName, colormap: "gray" };
  if (d.modality === "CT") Object.assign(scan, { cal_min: -160, cal_max: 240 });   // abdomen window W400 L40
  const overlays = d.attentionUrl
    ? [{ url: d.attentionUrl, name: d.attentionName, colormap: "hot", opacity: 0.6, cal_min: 1, cal_max: 14 }]
    : [];
  // the label is NiiVue's drawing layer: coloured at draw time, so an organ toggle is one redraw
  const [, label] = await Promise.all([
    nv.loadVolumes([scan, ...overlays]),
    d.labelUrl ? NVImage.loadFromUrl({ url: d.labelUrl, name: d.labelName }) : Promise.resolve(null),
  ]);
  const present = new Set();
  if (label) {
    if (!nv.loadDrawing(label)) throw new Error("the label is not on the scan's grid");
    label.img.forEach((v) => present.add(v));
    nv.setDrawOpacity(0.5);
  }
  const recolour = () => {
    const table = [{ id: 0, rgb: [0, 0, 0] }, ...organs];
    nv.drawLut = cmapper.makeDrawLut({
      R: table.map((o) => o.rgb[0]), G: table.map((o) => o.rgb[1]), B: table.map((o) => o.rgb[2]),
      A: table.map((o) => (o.id && shown.get(o.id) ? 255 : 0)), I: table.map((o) => o.id),
      labels: table.map((o) => o.name ?? ""),
    });
    nv.refreshColormaps();
    nv.drawScene();
  };
  recolour();
  nv.setSliceType(SLICE_TYPE.MULTIPLANAR);

  // the canvas takes the shape of the planes (see chooseLayout), beside the controls when there is room for both
  const fit = () => {
    const room = root.parentElement.clientWidth;
    const maxWidth = room < 900 ? room : Math.min(960, room - 420);   // the controls: 24em and the gap
    const maxHeight = Math.max(400, Math.min(820, 0.8 * window.innerHeight));
    const layout = chooseLayout(nv.sliceScale().volScale, maxWidth, maxHeight);
    root.style.width = `${layout.width}px`;    // CSSOM: allowed without 'unsafe-inline'
    root.style.height = `${layout.height}px`;
    root.dataset.layout = layout.name;
    nv.opts.multiplanarLayout = MULTIPLANAR_TYPE[layout.name];
    nv.resizeListener();   // the drawing buffer at the new size now, not at NiiVue's observer's next frame; redraws
  };
  fit();
  let fitting = false;
  window.addEventListener("resize", () => {
    if (fitting) return;
    fitting = true;
    requestAnimationFrame(() => { fitting = false; fit(); });
  });

  const toggles = document.getElementById("organ-toggles");
  for (const organ of organs.filter((o) => present.has(o.id))) {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.organ = String(organ.id);
    box.addEventListener("change", () => { shown.set(organ.id, box.checked); recolour(); });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${organ.rgb.join(",")})`;   // CSSOM: allowed without 'unsafe-inline'
    const item = document.createElement("label");
    item.append(box, swatch, ` ${organ.id} ${organ.name}`);
    toggles.append(item);
  }
  document.getElementById("toggle-label").addEventListener("change", (e) => nv.setDrawOpacity(e.target.checked ? 0.5 : 0));
  // the attention map is off until asked for: its heat would tint the organs' colours
  const attention = document.getElementById("toggle-attention");
  const showAttention = () => {
    nv.overlayAlphaShader = attention?.checked ? 1 : 0;   // the only overlay: a draw-time uniform, no re-render
    nv.drawScene();
  };
  attention?.addEventListener("change", showAttention);
  showAttention();   // the box as the browser restored it (unticked on a fresh page)
  // NiiVue's own keys are Ctrl+U / Ctrl+D; PageUp/PageDown and the arrows step the axial slice as well
  canvas.addEventListener("keydown", (e) => {
    const step = { PageUp: 1, ArrowUp: 1, PageDown: -1, ArrowDown: -1 }[e.key];
    if (step === undefined) return;
    e.preventDefault();
    nv.moveCrosshairInVox(0, 0, step);
  });

  let latest = null;
  nv.onLocationChange = (loc) => {
    const ras = [loc.mm[0], loc.mm[1], loc.mm[2]];
    const voxel = fileIndex(nv.volumes[0], ras);
    const [, nx, ny] = label ? label.hdr.dims : [];
    const value = label ? label.img[voxel[0] + nx * (voxel[1] + ny * voxel[2])] : 0;
    latest = { mm: toLPS(ras).map((v) => Math.round(v * 1000) / 1000), voxel, organ: value };
    const name = organs.find((o) => o.id === value)?.name ?? "no organ";
    picked.textContent = `x, y, z ${latest.mm.map((v) => v.toFixed(1)).join(", ")} mm · voxel ${voxel.join(", ")} · ${name}`;
    picked.dataset.json = JSON.stringify(latest);
  };
  // a click (not a scroll) puts the point into the vote form, for the organ chosen beside the viewer
  canvas.addEventListener("pointerup", () => setTimeout(() => {
    const organ = document.getElementById("point-organ")?.value;
    const field = organ && document.getElementById(`point_${organ}`);
    if (!latest || !field) return;
    field.value = latest.mm.join(", ");
    picked.dataset.count = String(Number(picked.dataset.count || 0) + 1);
  }, 0));

  goTo = (point) => {
    const volume = nv.volumes[0];
    const ras = point.at
      ? toRAS(point.at)
      : [0, 1, 2].map((i) => volume.hdr.affine[i].reduce((s, x, j) => s + x * [...point.voxel, 1][j], 0));
    nv.scene.crosshairPos = nv.mm2frac(ras, 0, true).map((f) => Math.min(1, Math.max(0, f)));
    nv.createOnLocationChange();   // the location line below the viewer follows
    nv.drawScene();
  };
  if (pending || initial) goTo(pending || initial);

  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  statusEl.textContent = `${nv.volumes[0].dims.slice(1, 4).join(" × ")} voxels; wheel or PageUp/PageDown: slices; ` +
    "click: a point";
  root.dataset.ready = "1";   // the browser test waits for this
}

if (root) {
  start().catch((error) => {
    statusEl.textContent = `The slice viewer could not show this case: ${error}`;
    root.dataset.ready = "error";
    root.dataset.error = String((error && error.stack) || error);
  });
}
