"""Seed the storm benchmark's data.

  manage.py seed_storm [--users N] [--projects M]

Users storm0001..stormNNNN, password "storm-password", email
stormNNNN@example.com (a verified primary address in allauth's table).
Projects with ids 1..M, each with 30 priced resources, a tree of 48 work items
(3 classifications x 3 sub-classifications x 4 items), the items' unit-price
analyses and a weekly schedule. Running it again replaces everything it made.

Password hashing is the point of the benchmark, so it is not done 300 times
here: one hash is made with the configured hasher (STORM_PBKDF2_ITERATIONS) and
stored for every user. It is exactly the string Django would store, at the
iteration count logins verify with, so no login re-hashes (upgrades) it.
"""
import random
import time
from datetime import timedelta
from decimal import Decimal

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.sites.models import Site
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from allauth.account.models import EmailAddress

from projects.models import HargaItem, Jadwal, Pekerjaan, PekerjaanDetail, Project

PASSWORD = "storm-password"
ITEMS = [
    ("TK", "Pekerja", "OH", 110000),
    ("TK", "Tukang batu", "OH", 135000),
    ("TK", "Tukang kayu", "OH", 135000),
    ("TK", "Tukang besi", "OH", 135000),
    ("TK", "Kepala tukang", "OH", 150000),
    ("TK", "Mandor", "OH", 160000),
    ("TK", "Tukang cat", "OH", 130000),
    ("TK", "Tukang pipa", "OH", 135000),
    ("TK", "Operator alat", "OH", 175000),
    ("TK", "Pembantu operator", "OH", 120000),
    ("BHN", "Semen Portland 50 kg", "zak", 68000),
    ("BHN", "Pasir pasang", "m3", 285000),
    ("BHN", "Pasir beton", "m3", 310000),
    ("BHN", "Kerikil 2/3", "m3", 340000),
    ("BHN", "Batu kali", "m3", 295000),
    ("BHN", "Bata merah", "bh", 900),
    ("BHN", "Besi beton polos", "kg", 14500),
    ("BHN", "Kawat beton", "kg", 24000),
    ("BHN", "Kayu kelas III", "m3", 3200000),
    ("BHN", "Paku 5-12 cm", "kg", 21000),
    ("BHN", "Cat tembok", "kg", 38000),
    ("BHN", "Pipa PVC 3 in", "m", 42000),
    ("ALT", "Molen 0,3 m3", "jam", 95000),
    ("ALT", "Excavator 0,8 m3", "jam", 520000),
    ("ALT", "Dump truck 5 t", "jam", 380000),
    ("ALT", "Vibrator beton", "jam", 60000),
    ("ALT", "Stamper", "jam", 75000),
    ("ALT", "Bar bender", "jam", 45000),
    ("ALT", "Scaffolding", "set", 25000),
    ("ALT", "Water tank", "jam", 150000),
]
KLASIFIKASI = ["Pekerjaan persiapan", "Pekerjaan struktur", "Pekerjaan arsitektur"]
SUB = ["Tanah dan pondasi", "Beton bertulang", "Pasangan dan finishing"]
LEAF = ["Galian tanah", "Urugan pasir", "Bekisting", "Pembesian", "Pengecoran", "Pasangan bata", "Plesteran", "Pengecatan"]
SATUAN = ["m3", "m2", "kg", "m1"]
WEEKS = 16


class Command(BaseCommand):
    help = "Create the storm benchmark's users and projects (replacing earlier ones)."

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=300)
        parser.add_argument("--projects", type=int, default=50)
        parser.add_argument("--seed", type=int, default=26)

    def handle(self, *args, users, projects, seed, **options):
        if not 1 <= users <= 9999:
            raise CommandError("--users must be between 1 and 9999")
        if projects < 1:
            raise CommandError("--projects must be at least 1")
        rng = random.Random(seed)
        started = time.monotonic()
        hash_started = time.process_time()
        encoded = make_password(PASSWORD)
        hash_cpu = time.process_time() - hash_started
        with transaction.atomic():
            self._site()
            self._users(users, encoded)
            self._projects(projects, rng)
        self.stdout.write(
            "seed_storm: %d users (hash %s, made in %.3f CPU-s), %d projects, %d work items, in %.1f s"
            % (
                users,
                "$".join(encoded.split("$")[:2]),
                hash_cpu,
                projects,
                Pekerjaan.objects.count(),
                time.monotonic() - started,
            )
        )

    def _site(self):
        Site.objects.update_or_create(pk=1, defaults={"domain": "127.0.0.1", "name": "storm"})

    def _users(self, n, encoded):
        User = get_user_model()
        User.objects.filter(username__regex=r"^storm[0-9]{4}$").delete()
        User.objects.bulk_create(
            User(
                username="storm%04d" % i,
                email="storm%04d@example.com" % i,
                password=encoded,
                is_active=True,
            )
            for i in range(1, n + 1)
        )
        ids = dict(User.objects.filter(username__regex=r"^storm[0-9]{4}$").values_list("username", "id"))
        EmailAddress.objects.bulk_create(
            EmailAddress(user_id=uid, email=name + "@example.com", verified=True, primary=True)
            for name, uid in sorted(ids.items())
        )

    def _projects(self, m, rng):
        with connection.cursor() as cursor:
            cursor.execute(
                "TRUNCATE projects_jadwal, projects_pekerjaandetail, projects_pekerjaan,"
                " projects_hargaitem, projects_project RESTART IDENTITY CASCADE"
            )
        now = timezone.now()
        Project.objects.bulk_create(
            Project(
                id=i,
                nama="Proyek %03d - Gedung %s" % (i, rng.choice(["Kantor", "Sekolah", "Puskesmas", "Gudang", "Asrama"])),
                lokasi=rng.choice(["Jakarta", "Bandung", "Surabaya", "Medan", "Makassar", "Semarang"]),
                tahun=rng.choice([2024, 2025, 2026]),
                updated_at=now - timedelta(minutes=rng.randint(0, 60 * 24 * 90)),
            )
            for i in range(1, m + 1)
        )
        with connection.cursor() as cursor:  # ids were given explicitly
            cursor.execute("SELECT setval(pg_get_serial_sequence('projects_project', 'id'), %s)", [m])

        items = HargaItem.objects.bulk_create(
            HargaItem(
                project_id=p,
                kode="%s.%02d" % (kat, k + 1),
                uraian=uraian,
                satuan=satuan,
                kategori=kat,
                harga_satuan=Decimal(harga) * Decimal(rng.randint(90, 115)) / 100,
            )
            for p in range(1, m + 1)
            for k, (kat, uraian, satuan, harga) in enumerate(ITEMS)
        )
        items_of = {}
        for it in items:
            items_of.setdefault(it.project_id, []).append(it)

        def node(p, parent, level, kode, uraian, **extra):
            return Pekerjaan(project_id=p, parent=parent, level=level, kode=kode, uraian=uraian, urutan=0, **extra)

        # Parents' ids are needed first: create level by level, then number
        # every project's nodes depth-first (urutan), the order kode sorts in.
        level1 = Pekerjaan.objects.bulk_create(
            node(p, None, 1, "ABC"[a], KLASIFIKASI[a]) for p in range(1, m + 1) for a in range(3)
        )
        level2 = Pekerjaan.objects.bulk_create(
            node(n1.project_id, n1, 2, "%s.%d" % (n1.kode, b + 1), SUB[b]) for n1 in level1 for b in range(3)
        )
        level3 = Pekerjaan.objects.bulk_create(
            node(
                n2.project_id,
                n2,
                3,
                "%s.%d" % (n2.kode, c + 1),
                rng.choice(LEAF),
                satuan=rng.choice(SATUAN),
                volume=Decimal(rng.randint(500, 250000)) / 100,
            )
            for n2 in level2
            for c in range(4)
        )
        for p_nodes in _group(level1 + level2 + level3).values():
            for pos, n in enumerate(sorted(p_nodes, key=_kode_key), 1):
                n.urutan = pos
        Pekerjaan.objects.bulk_update(level1 + level2 + level3, ["urutan"], batch_size=2000)

        PekerjaanDetail.objects.bulk_create(
            PekerjaanDetail(pekerjaan=leaf, harga_item=it, koefisien=Decimal(rng.randint(5, 4000)) / 1000)
            for leaf in level3
            for it in rng.sample(items_of[leaf.project_id], rng.randint(3, 6))
        )
        jadwal = []
        for leaf in level3:
            start = rng.randint(1, WEEKS - 3)
            span = rng.randint(2, 4)
            share = (Decimal(100) / span).quantize(Decimal("0.01"))
            for w in range(span):
                bobot = share if w < span - 1 else Decimal(100) - share * (span - 1)
                jadwal.append(Jadwal(pekerjaan=leaf, minggu=start + w, bobot=bobot))
        Jadwal.objects.bulk_create(jadwal)


def _kode_key(n):
    return [int(x) if x.isdigit() else x for x in n.kode.split(".")]


def _group(nodes):
    out = {}
    for n in nodes:
        out.setdefault(n.project_id, []).append(n)
    return out
