// One smoothing for every chart (the run page, the compare page): a debiased exponential moving average, as
// TensorBoard draws it. Nulls stay nulls (a step the series has no value at).
window.loradeck = window.loradeck || {};
window.loradeck.smooth = function (values, alpha) {
  if (!alpha) return values.slice();
  const out = [];
  let last = 0, weight = 0;
  for (const v of values) {
    if (v === null || v === undefined) { out.push(null); continue; }
    last = alpha * last + (1 - alpha) * v;
    weight = alpha * weight + (1 - alpha);
    out.push(last / weight);
  }
  return out;
};
