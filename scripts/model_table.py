"""Print the shipped models' held-out table (markdown) from their manifests: the numbers in docs/models.md."""

from BrainTumorExplainLib.models import SHIPPED_NETWORKS, pretrained_manifest

print("| model | parameters | WT Dice | TC Dice | ET Dice | WT HD95 mm | TC HD95 mm | ET HD95 mm | training | device |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in SHIPPED_NETWORKS:
    m = pretrained_manifest(name)
    mean = m["heldout"]["mean"]
    print(f"| {name} | {m['parameters'] / 1e6:.2f} M | " + " | ".join(f"{mean[r]['dice']:.3f}" for r in ("WT", "TC", "ET"))
          + " | " + " | ".join(f"{mean[r]['hd95_mm']:.1f}" for r in ("WT", "TC", "ET"))
          + f" | {m['training']['seconds'] / 60:.1f} min | {m['training']['device']} |")
