// The Generate tab's size picker: which sizes this server runs in real time. The welcome's
// optional `sizes` (docs/protocol.md) estimates each generation pipeline's sizes on the
// server's device; a size it cannot run in real time is disabled and labelled with the frame
// rate it would reach there, so that nobody starts a session that would be refused
// compute_full. Without the field (a cluster, an uncalibrated server) every size stays on offer.
"use strict";

function fpsText(fps) {
  if (fps >= 10) return String(Math.round(fps));
  return fps >= 0.1 ? fps.toFixed(1) : "<0.1";
}

// select: the <select> whose option values are "HxW" ("" the model's own); entries: the
// welcome's list for the chosen pipeline (the default size first), or undefined
function markSizes(select, entries) {
  const list = entries || [];
  const byValue = new Map(list.map((e) => [`${e.height}x${e.width}`, e]));
  for (const [value, e] of byValue) { // a size the server estimates that the page lacks
    if (![...select.options].some((o) => o.value === value)) {
      select.add(new Option(`${e.height}×${e.width}`, value));
    }
  }
  for (const option of select.options) {
    if (option.dataset.label === undefined) option.dataset.label = option.textContent;
    const entry = option.value ? byValue.get(option.value) : list[0];
    let label = option.dataset.label;
    if (!option.value && entry) label += ` (${entry.height}×${entry.width})`;
    if (entry && !entry.realtime) label += ` · ~${fpsText(entry.fps)} fps here`;
    option.textContent = label;
    option.disabled = Boolean(entry && !entry.realtime);
    option.dataset.realtime = entry ? String(entry.realtime) : "unknown";
  }
  if (select.selectedOptions.length && select.selectedOptions[0].disabled) {
    const usable = [...select.options].find((o) => !o.disabled);
    if (usable) select.value = usable.value;
  }
}
