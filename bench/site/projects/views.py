"""Core pages and JSON endpoints. Each is login_required (so each reads the
session and the user: two queries) and then runs a handful of real queries on
the seeded data - a few milliseconds of database and Python work, never heavy.
Any logged-in user may view any project.
"""
from collections import defaultdict
from decimal import Decimal

from django.contrib.auth.decorators import login_required
from django.db.models import Avg, Count, DecimalField, ExpressionWrapper, F, Max, Min, Sum
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from .models import HargaItem, Jadwal, Pekerjaan, PekerjaanDetail, Project

MONEY = DecimalField(max_digits=20, decimal_places=2)


def healthz(request):
    """Liveness without touching the database (nor the session)."""
    return HttpResponse("ok\n", content_type="text/plain")


def _unit_prices(project):
    """Unit price of every leaf work item: sum of coefficient x resource price."""
    rows = (
        PekerjaanDetail.objects.filter(pekerjaan__project=project)
        .values("pekerjaan_id")
        .annotate(
            harga_satuan=Sum(
                ExpressionWrapper(F("koefisien") * F("harga_item__harga_satuan"), output_field=MONEY)
            )
        )
    )
    return {r["pekerjaan_id"]: r["harga_satuan"].quantize(Decimal("0.01")) for r in rows}


def _nodes(project):
    return list(
        Pekerjaan.objects.filter(project=project).values(
            "id", "parent_id", "level", "kode", "uraian", "satuan", "volume", "urutan"
        )
    )


@login_required
def dashboard(request):
    projects = list(
        Project.objects.annotate(n_pekerjaan=Count("pekerjaan")).order_by("-updated_at", "id")[:20]
    )
    totals = Project.objects.aggregate(n=Count("id"), terakhir=Max("updated_at"))
    items = HargaItem.objects.aggregate(n=Count("id"), termurah=Min("harga_satuan"), termahal=Max("harga_satuan"))
    return render(
        request, "projects/dashboard.html", {"projects": projects, "totals": totals, "items": items}
    )


@login_required
def harga_items(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    items = list(project.harga_items.all())
    per_kategori = list(
        project.harga_items.values("kategori")
        .annotate(n=Count("id"), rata=Avg("harga_satuan"), maks=Max("harga_satuan"))
        .order_by("kategori")
    )
    return render(
        request, "projects/harga_items.html", {"project": project, "items": items, "per_kategori": per_kategori}
    )


@login_required
def rekap_rab(request, project_id):
    """Budget summary: leaf totals (volume x unit price) rolled up the tree."""
    project = get_object_or_404(Project, pk=project_id)
    nodes = _nodes(project)
    prices = _unit_prices(project)
    by_id = {n["id"]: n for n in nodes}
    total = defaultdict(Decimal)
    for n in nodes:
        if n["level"] == 3:
            amount = (n["volume"] * prices.get(n["id"], Decimal(0))).quantize(Decimal("0.01"))
            node = n
            while node is not None:
                total[node["id"]] += amount
                node = by_id.get(node["parent_id"])
    rows = [dict(n, jumlah=total[n["id"]]) for n in nodes if n["level"] < 3]
    subtotal = sum((total[n["id"]] for n in nodes if n["level"] == 1), Decimal(0))
    ppn = (subtotal * project.ppn_persen / 100).quantize(Decimal("0.01"))
    return render(
        request,
        "projects/rekap_rab.html",
        {"project": project, "rows": rows, "subtotal": subtotal, "ppn": ppn, "grand_total": subtotal + ppn},
    )


@login_required
def list_pekerjaan(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    nodes = _nodes(project)
    n_details = dict(
        PekerjaanDetail.objects.filter(pekerjaan__project=project)
        .values("pekerjaan_id")
        .annotate(n=Count("id"))
        .values_list("pekerjaan_id", "n")
    )
    for n in nodes:
        n["n_details"] = n_details.get(n["id"], 0)
    return render(request, "projects/list_pekerjaan.html", {"project": project, "nodes": nodes})


@login_required
def jadwal_pekerjaan(request, project_id):
    """Schedule: weekly share per leaf and the cumulative plan (S-curve)."""
    project = get_object_or_404(Project, pk=project_id)
    leaves = [n for n in _nodes(project) if n["level"] == 3]
    prices = _unit_prices(project)
    weeks = defaultdict(dict)
    n_weeks = 0
    for j in Jadwal.objects.filter(pekerjaan__project=project).values("pekerjaan_id", "minggu", "bobot"):
        weeks[j["pekerjaan_id"]][j["minggu"]] = j["bobot"]
        n_weeks = max(n_weeks, j["minggu"])
    amounts = {n["id"]: n["volume"] * prices.get(n["id"], Decimal(0)) for n in leaves}
    grand = sum(amounts.values(), Decimal(0)) or Decimal(1)
    plan = [Decimal(0)] * (n_weeks + 1)
    for n in leaves:
        for minggu, bobot in weeks[n["id"]].items():
            plan[minggu] += amounts[n["id"]] / grand * bobot
    cumulative, running = [], Decimal(0)
    for minggu in range(1, n_weeks + 1):
        running += plan[minggu]
        cumulative.append((minggu, plan[minggu].quantize(Decimal("0.01")), running.quantize(Decimal("0.01"))))
    rows = [dict(n, minggu=sorted(weeks[n["id"]].items())) for n in leaves]
    return render(
        request, "projects/jadwal_pekerjaan.html", {"project": project, "rows": rows, "cumulative": cumulative}
    )


@login_required
def api_pekerjaan_tree(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    nodes = _nodes(project)
    children = defaultdict(list)
    for n in nodes:
        children[n["parent_id"]].append(n)

    def build(n):
        out = {
            "id": n["id"],
            "kode": n["kode"],
            "uraian": n["uraian"],
            "level": n["level"],
        }
        if n["level"] == 3:
            out["satuan"] = n["satuan"]
            out["volume"] = str(n["volume"])
        else:
            out["children"] = [build(c) for c in children[n["id"]]]
        return out

    return JsonResponse({"project": {"id": project.id, "nama": project.nama}, "tree": [build(n) for n in children[None]]})


@login_required
def api_pricing(request, project_id):
    project = get_object_or_404(Project, pk=project_id)
    prices = _unit_prices(project)
    leaves = Pekerjaan.objects.filter(project=project, level=3).values("id", "kode", "satuan", "volume")
    lines, subtotal = [], Decimal(0)
    for n in leaves:
        unit = prices.get(n["id"], Decimal(0))
        amount = (unit * n["volume"]).quantize(Decimal("0.01"))
        subtotal += amount
        lines.append(
            {"id": n["id"], "kode": n["kode"], "satuan": n["satuan"], "volume": n["volume"], "harga_satuan": unit, "jumlah": amount}
        )
    ppn = (subtotal * project.ppn_persen / 100).quantize(Decimal("0.01"))
    return JsonResponse(
        {"project": project.id, "lines": lines, "subtotal": subtotal, "ppn": ppn, "total": subtotal + ppn}
    )
