// Screenshot the LAM web player (index.html) once its picture has settled: software GL is slow, so
// a picture counts as final when the player has loaded, something is drawn, and two screenshots
// STEP seconds apart are identical. Run by tests/test_web_player.py.
//
// usage: node shoot.mjs CHROMIUM URL OUT.png [MAX_SECONDS=120] [STEP_SECONDS=4] [SIZE=512]
// Prints one JSON line: {"ok", "seconds", "status" (the page's), "drawn" (non-white pixels), "errors"}.
import puppeteer from "puppeteer-core";
import { writeFileSync } from "node:fs";

const [chromium, url, out, maxS = "120", stepS = "4", sizeS = "512"] = process.argv.slice(2);
const size = Number(sizeS);
const minDrawn = (size * size) / 100; // drawn: at least 1 % of the picture is not background

// Non-white pixels of a PNG (base64), counted in the page (node has no image decoder).
async function nonWhitePixels(b64) {
  const img = new Image();
  img.src = "data:image/png;base64," + b64;
  await img.decode();
  const canvas = document.createElement("canvas");
  canvas.width = img.width;
  canvas.height = img.height;
  const g = canvas.getContext("2d");
  g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, canvas.width, canvas.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250) n++;
  return n;
}

const t0 = Date.now();
const errors = [];
let ok = false, status = "", drawn = 0;
const browser = await puppeteer.launch({
  executablePath: chromium,
  headless: true,
  args: ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-dev-shm-usage",
         `--window-size=${size},${size}`],
});
try {
  const page = await browser.newPage();
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  await page.setViewport({ width: size, height: size });
  await page.goto(url, { waitUntil: "load", timeout: 30000 });
  let previous = null;
  while ((Date.now() - t0) / 1000 < Number(maxS)) {
    await new Promise((r) => setTimeout(r, Number(stepS) * 1000));
    status = String(await page.evaluate(() => window.lamStatus));
    if (status.startsWith("error")) break;
    const shot = Buffer.from(await page.screenshot({ type: "png" }));
    drawn = await page.evaluate(nonWhitePixels, shot.toString("base64"));
    if (status === "loaded" && drawn >= minDrawn && previous !== null && shot.equals(previous)) {
      writeFileSync(out, shot);
      ok = true;
      break;
    }
    previous = shot;
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ok, seconds: (Date.now() - t0) / 1000, status, drawn, errors }));
